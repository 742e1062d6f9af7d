# p(EOS) of the first response token on a prompts file, for each model folder: where empty answers come from.
# Usage: .venv/bin/python scripts/bench/first_token_eos.py PROMPTS.jsonl MODEL_DIR [MODEL_DIR ...]
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
prompts = [json.loads(l) for l in open(sys.argv[1])]
tok = AutoTokenizer.from_pretrained('models/smollm2-135m-instruct')
for d in sys.argv[2:]:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ps = []
    with torch.no_grad():
        for r in prompts:
            ids = tok(r['prompt'], return_tensors='pt').input_ids
            p = m(ids).logits[0, -1].softmax(-1)
            ps.append((p[0] + p[2]).item())
    ps_t = torch.tensor(ps)
    top = sorted(range(len(ps)), key=lambda i: -ps[i])[:6]
    print(d, f'mean {ps_t.mean():.4f} median {ps_t.median():.4f} >0.1: {(ps_t>0.1).sum().item()} >0.3: {(ps_t>0.3).sum().item()}', [(prompts[i]['id'], round(ps[i],3)) for i in top], flush=True)
