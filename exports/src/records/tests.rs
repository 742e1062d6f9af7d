use super::*;

fn write(lines: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(lines.as_bytes()).unwrap();
    f
}

#[test]
fn errors_name_file_line_and_problem() {
    let f = write("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":\"b\"}\n");
    let e = read_jsonl::<PairRecord>(f.path()).unwrap_err().to_string();
    let p = f.path().display().to_string();
    assert!(e.starts_with(&format!("{p}:3: ")), "{e}");
    assert!(e.contains("missing field `rejected`"), "{e}");
}

#[test]
fn wrong_types_and_bad_roles_are_rejected() {
    let cases = [
        (
            "{\"id\":\"1\",\"prompt\":3}",
            "expected a string or a list of messages",
        ),
        (
            "{\"id\":\"1\"}",
            "missing field `prompt` (or `messages`); this record has keys `id`",
        ),
        ("{\"prompt\":\"x\"}", "missing field `id`"),
        ("{\"id\":\"\",\"prompt\":\"x\"}", "`id` must not be empty"),
        (
            "{\"id\":[1],\"prompt\":\"x\"}",
            "`id`: expected a string or an integer",
        ),
        ("{\"id\":\"1\",\"prompt\":\"x\",\"messages\":[]}", "both"),
        (
            "{\"id\":\"1\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
            "role `robot`",
        ),
        (
            "{\"id\":\"1\",\"messages\":[{\"role\":\"user\"}]}",
            "missing field `content`",
        ),
        ("not json", "expected"),
        ("[1]", "expected a JSON object"),
    ];
    for (line, want) in cases {
        let e = parse_line::<PromptRecord>(line).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn a_typo_in_a_known_key_names_the_keys_the_record_has() {
    let e = parse_line::<PromptRecord>("{\"id\":\"1\",\"promt\":\"x\"}").unwrap_err();
    assert!(
        e.contains("missing field `prompt` (or `messages`); this record has keys `id`, `promt`"),
        "{e}"
    );
    let e = parse_line::<TrainRecord>("{\"question\":\"a\",\"answer\":\"b\"}").unwrap_err();
    assert!(
        e.contains("this record has keys `question`, `answer`"),
        "{e}"
    );
    let e = parse_line::<PairRecord>("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejeced\":\"c\"}")
        .unwrap_err();
    assert!(
        e.contains("missing field `rejected`; this record has keys `prompt`, `chosen`, `rejeced`"),
        "{e}"
    );
}

#[test]
fn extra_fields_are_kept_in_order_and_written_back() {
    let line = "{\"id\":7,\"prompt\":\"a\",\"category\":\"math\",\"meta\":{\"level\":3,\"tags\":[\"x\"]},\"reference\":\"b\"}";
    let r = parse_line::<PromptRecord>(line).unwrap();
    assert_eq!(r.id, "7", "an integer id is taken as its text");
    assert_eq!(r.reference.as_deref(), Some("b"));
    let keys: Vec<&str> = r.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["category", "meta"]);
    // Known keys taken out from anywhere leave the others in file order.
    let r2 = parse_line::<PromptRecord>(
        "{\"a\":1,\"id\":\"x\",\"b\":2,\"prompt\":\"p\",\"c\":3,\"reference\":\"r\",\"d\":4,\"e\":5}",
    )
    .unwrap();
    let keys: Vec<&str> = r2.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        "{\"id\":\"7\",\"prompt\":\"a\",\"reference\":\"b\",\"category\":\"math\",\"meta\":{\"level\":3,\"tags\":[\"x\"]}}"
    );
    // Messages keep their own extra keys.
    let r = parse_line::<PromptRecord>(
        "{\"id\":\"1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\",\"name\":\"ann\"}]}",
    )
    .unwrap();
    assert_eq!(r.messages.unwrap()[0].extra["name"], "ann");
    // A generation record carries its prompt record's extra fields, and reads them back.
    let g = GenerationRecord::of(
        parse_line::<PromptRecord>("{\"id\":\"1\",\"prompt\":\"a\",\"source\":\"bench\"}").unwrap(),
        vec![],
        0.0,
    );
    let text = serde_json::to_string(&g).unwrap();
    assert_eq!(
        text,
        "{\"id\":\"1\",\"prompt\":\"a\",\"responses\":[],\"seconds\":0.0,\"source\":\"bench\"}"
    );
    assert_eq!(parse_line::<GenerationRecord>(&text).unwrap(), g);
}

#[test]
fn trls_prompt_only_form_is_read_as_messages() {
    let r = parse_line::<PromptRecord>(
        "{\"id\":\"1\",\"prompt\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
    )
    .unwrap();
    assert_eq!(
        (r.prompt, r.messages),
        (None, Some(vec![Message::new("user", "hi")]))
    );
}

#[test]
fn implicit_prompts_are_split_off_as_trls_extract_prompt_does() {
    // TRL: extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    // == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    let p = parse_line::<PairRecord>(
        "{\"chosen\":\"The sky is blue.\",\"rejected\":\"The sky is green.\"}",
    )
    .unwrap();
    assert_eq!(p.prompt, Prompt::Text("The sky is".into()));
    assert_eq!((p.chosen, p.rejected), (" blue.".into(), " green.".into()));
    let p = parse_line::<PairRecord>(concat!(
        "{\"chosen\":[{\"role\":\"user\",\"content\":\"Sky?\"},{\"role\":\"assistant\",\"content\":\"Blue.\"}],",
        "\"rejected\":[{\"role\":\"user\",\"content\":\"Sky?\"},{\"role\":\"assistant\",\"content\":\"Green.\"}]}"
    ))
    .unwrap();
    assert_eq!(
        p.prompt,
        Prompt::Messages(vec![Message::new("user", "Sky?")])
    );
    assert_eq!(
        p.chosen,
        Completion::Messages(vec![Message::new("assistant", "Blue.")])
    );
    for (line, want) in [
        (
            "{\"chosen\":\"abc\",\"rejected\":\"xyz\"}",
            "share no prefix",
        ),
        (
            "{\"chosen\":\"abc\",\"rejected\":\"abcd\"}",
            "prefix of the other",
        ),
        (
            "{\"chosen\":\"abc\",\"rejected\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            "both be strings",
        ),
    ] {
        let e = parse_line::<PairRecord>(line).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn kto_records_are_binary_feedback() {
    let r = parse_line::<TrainRecord>(
        "{\"prompt\":\"a\",\"completion\":\" b\",\"label\":false,\"score\":1}",
    )
    .unwrap();
    let TrainRecord::Binary(b) = r else {
        panic!("{r:?}")
    };
    assert_eq!((b.response, b.label), (" b".into(), false));
    assert_eq!(b.extra["score"], 1);
    let e = parse_line::<TrainRecord>(
        "{\"prompt\":\"a\",\"completion\":\"b\",\"response\":\"c\",\"label\":true}",
    )
    .unwrap_err();
    assert!(e.contains("both `response` and `completion`"), "{e}");
    let e = parse_line::<TrainRecord>("{\"prompt\":\"a\",\"completion\":\"b\"}").unwrap_err();
    assert!(e.contains("missing field `label`"), "{e}");
}

#[test]
fn pairs_and_binary_records_mix_and_round_trip_exactly() {
    let text = concat!(
        "{\"id\":\"p1\",\"prompt\":[{\"role\":\"user\",\"content\":\"hi\"}],\"chosen\":\"hello\",\"rejected\":\"go\",\"chosen_reward\":1.5,\"rejected_reward\":-0.25,\"source\":\"label\"}\n",
        "{\"prompt\":\"The cat\",\"response\":\" sat.\",\"label\":false}\n"
    );
    let f = write(text);
    let records = read_jsonl::<TrainRecord>(f.path()).unwrap();
    assert!(matches!(records[0], TrainRecord::Pair(_)));
    assert!(matches!(&records[1], TrainRecord::Binary(b) if !b.label));
    let out = tempfile::NamedTempFile::new().unwrap();
    write_jsonl(out.path(), &records).unwrap();
    assert_eq!(fs::read_to_string(out.path()).unwrap(), text);
}

#[test]
fn a_broken_training_record_names_the_missing_field() {
    let e = parse_line::<TrainRecord>("{\"prompt\":\"a\",\"chosen\":\"b\"}").unwrap_err();
    assert!(e.contains("missing field `rejected`"), "{e}");
    let e = parse_line::<TrainRecord>("{\"prompt\":\"a\",\"response\":\"b\"}").unwrap_err();
    assert!(e.contains("missing field `label`"), "{e}");
    let e = parse_line::<TrainRecord>("{\"prompt\":\"a\"}").unwrap_err();
    assert!(e.contains("expected a pair"), "{e}");
    assert!(e.contains("this record has keys `prompt`"), "{e}");
}

#[test]
fn identical_chosen_and_rejected_is_an_error() {
    let e = parse_line::<PairRecord>("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"b\"}")
        .unwrap_err();
    assert!(e.contains("equals"), "{e}");
}

#[test]
fn appender_drops_a_torn_last_line() {
    let f = write("{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"pro");
    let mut a = JsonlAppender::open(f.path()).unwrap();
    a.append(&PromptRecord::text("c", "y")).unwrap();
    let ids: Vec<String> = read_jsonl::<PromptRecord>(f.path())
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
}
