"""Run onnx.checker (full_check: with shape inference) on every kind of graph `exports onnx`
writes, and check IR version <= 13 (what ONNX Runtime 1.31 reads) and that all weights are external.

Run from the repository root: .venv/bin/python scripts/reference/onnx_checker.py
Exit status 1 on the first failure.
"""

import os
import subprocess
import sys
import tempfile

import onnx

MODELS = {
    "llama": ["--arch", "llama", "--hidden-size", "64", "--attention-bias", "--untied", "--seed", "1"],
    "llama_reward": ["--arch", "llama", "--hidden-size", "64", "--head", "reward", "--seed", "2"],
    "gpt2": ["--arch", "gpt2", "--seed", "3"],
    "gpt2_reward": ["--arch", "gpt2", "--head", "reward", "--seed", "4"],
}

EXPORTS = [
    ("llama", ["--flavor", "ort"]),
    ("llama", ["--flavor", "portable"]),
    ("llama", ["--flavor", "ort", "--last-logits-only"]),
    ("llama", ["--flavor", "portable", "--dtype", "fp16"]),
    ("llama", ["--flavor", "ort", "--dtype", "bf16"]),
    ("llama_reward", ["--flavor", "ort", "--head", "reward"]),
    ("llama_reward", ["--flavor", "portable", "--head", "reward"]),
    ("gpt2", ["--flavor", "portable"]),
    ("gpt2", ["--flavor", "portable", "--last-logits-only"]),
    ("gpt2_reward", ["--flavor", "portable", "--head", "reward"]),
    ("llama", ["--flavor", "ort", "--last-logits-only", "--weights", "int8"]),
    ("llama", ["--flavor", "portable", "--weights", "int8"]),
    ("llama_reward", ["--flavor", "ort", "--head", "reward", "--weights", "int8"]),
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "exports"], check=True, cwd=root)
    exe = os.path.join(root, "target", "release", "exports")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in MODELS.items():
            subprocess.run([exe, "init", *args, "--out", os.path.join(tmp, name)], check=True, stdout=subprocess.DEVNULL)
        for i, (name, args) in enumerate(EXPORTS):
            out = os.path.join(tmp, f"onnx{i}")
            subprocess.run([exe, "onnx", "--model", os.path.join(tmp, name), "--out", out, *args], check=True, stdout=subprocess.DEVNULL)
            path = os.path.join(out, "model.onnx")
            m = onnx.load(path, load_external_data=False)
            assert m.ir_version <= 13, f"{name} {args}: ir_version {m.ir_version}"
            inline = [t.name for t in m.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
            assert not inline, f"{name} {args}: initializers not external: {inline}"
            onnx.checker.check_model(path, full_check=True)
            print(f"ok  {name:13s} {' '.join(args):45s} ir={m.ir_version} opsets={[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]} nodes={len(m.graph.node)}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report and fail
        print("FAILED:", e)
        sys.exit(1)
