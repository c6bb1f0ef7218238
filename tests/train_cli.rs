//! `fixpoint trajectories`, `fixpoint train` and `fixpoint tune` end to end on a tiny model:
//! interruption and resumption (including kill -9), and a clear error that leaves files
//! untouched for each kind of bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fixpoint::testing::write_tiny_gguf;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fixpoint"));
    c.env(
        "FIXPOINT_HOME",
        std::env::temp_dir().join("fixpoint-train-test-home"),
    );
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(last.contains(needle), "expected {needle:?} in {stderr}");
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    prompts: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model = root.join("tiny.gguf");
        write_tiny_gguf(&model).unwrap();
        let prompts = root.join("prompts.jsonl");
        let lines: Vec<String> = (0..6)
            .map(|i| format!("{{\"question\": \"what is {i} plus {}?\"}}", i * 3))
            .collect();
        std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
        Self {
            _dir: dir,
            root,
            model,
            prompts,
        }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn trajectories(&self, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "trajectories",
            "--model",
            self.model.to_str().unwrap(),
            "--prompts",
            self.prompts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--block",
            "4",
            "--max-new",
            "16",
            "--json-progress",
        ];
        args.extend_from_slice(extra);
        run(&args)
    }

    fn train_args<'a>(&'a self, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
        vec![
            "train",
            "--model",
            self.model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lr",
            "1e-3",
        ]
    }
}

#[test]
fn interrupted_trajectories_continue_to_the_same_file() {
    let f = Fixture::new();
    let whole = f.p("whole.jsonl");
    ok(&f.trajectories(&whole, &[]));
    let want = std::fs::read_to_string(&whole).unwrap();
    assert!(want.lines().count() >= 6, "{want}");
    let first: serde_json::Value = serde_json::from_str(want.lines().next().unwrap()).unwrap();
    for field in [
        "data_id",
        "jacobian_itr_id",
        "prompt_ids",
        "answer_trajectory_ids",
        "teacher_output_ids",
    ] {
        assert!(first.get(field).is_some(), "no {field}");
    }

    // Stop after three prompts, then leave half a line behind as a kill mid-write would.
    let part = f.p("part.jsonl");
    ok(&f.trajectories(&part, &["--limit", "3"]));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"data_id\": \"data_3\", \"jacob").unwrap();
    drop(file);
    ok(&f.trajectories(&part, &[]));
    assert_eq!(std::fs::read_to_string(&part).unwrap(), want);

    // Running it again with other settings is refused and changes nothing.
    assert_error(&f.trajectories(&part, &["--seed", "5"]), "other settings");
    assert_eq!(std::fs::read_to_string(&part).unwrap(), want);
}

#[test]
fn trajectories_never_overwrite_a_foreign_file() {
    let f = Fixture::new();
    let out = f.p("notes.jsonl");
    std::fs::write(&out, "my notes\n").unwrap();
    assert_error(&f.trajectories(&out, &[]), "already exists");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "my notes\n");
}

#[test]
fn bad_training_input_is_refused_and_nothing_is_touched() {
    let f = Fixture::new();
    let data = f.p("t.jsonl");
    ok(&f.trajectories(&data, &[]));
    let text = std::fs::read_to_string(&data).unwrap();
    let out = f.p("never");
    let train = |data: &Path| run(&f.train_args(data, &out));

    let empty = f.p("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert_error(&train(&empty), "holds no trajectory records");

    let truncated = f.p("truncated.jsonl");
    std::fs::write(&truncated, &text[..text.len() - 20]).unwrap();
    assert_error(&train(&truncated), "truncated");

    let foreign = f.p("foreign.jsonl");
    let mut r: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    r["tokenizer"] = "0123456789abcdef".into();
    std::fs::write(&foreign, format!("{r}\n")).unwrap();
    assert_error(&train(&foreign), "another tokenizer");

    let mixed = f.p("mixed.jsonl");
    let mut short: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    for s in short["answer_trajectory_ids"].as_array_mut().unwrap() {
        s.as_array_mut().unwrap().pop();
    }
    std::fs::write(
        &mixed,
        format!("{}\n{short}\n", text.lines().next().unwrap()),
    )
    .unwrap();
    assert_error(&train(&mixed), "block size");

    let mut args = f.train_args(&data, &out);
    args.extend(["--block", "8"]);
    assert_error(&run(&args), "not the 8 asked for");
    assert!(!out.exists(), "a refused run created {}", out.display());

    let existing = f.p("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    assert_error(&run(&f.train_args(&data, &existing)), "already exists");
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);

    assert_error(
        &run(&["train", "--out", existing.to_str().unwrap(), "--resume"]),
        "no checkpoint",
    );
}

/// Losses of each update, from `--json-progress` output.
fn step_losses(stdout: &str) -> Vec<(u64, f64)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn training_killed_with_sigkill_resumes_with_the_same_optimizer_state() {
    let f = Fixture::new();
    let data = f.p("t.jsonl");
    ok(&f.trajectories(&data, &[]));
    let steps = [
        "--steps",
        "400",
        "--checkpoint-every",
        "10",
        "--json-progress",
    ];

    let straight = f.p("straight");
    let mut args = f.train_args(&data, &straight);
    args.extend(steps);
    let reference = step_losses(&ok(&run(&args)));
    assert_eq!(reference.len(), 400);

    let killed = f.p("killed");
    let mut args = f.train_args(&data, &killed);
    args.extend(steps);
    let mut child = bin()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "checkpoint" && v["step"].as_u64().unwrap() >= 20 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("model.safetensors").exists(),
        "the run finished before it was killed"
    );

    let resumed = step_losses(&ok(&run(&[
        "train",
        "--out",
        killed.to_str().unwrap(),
        "--resume",
        "--json-progress",
    ])));
    let (first, _) = resumed[0];
    assert!(first >= 20 && first % 10 == 0, "resumed at {first}");
    assert_eq!(resumed.last().unwrap().0, 399);
    for &(step, loss) in &resumed {
        let want = reference[step as usize].1;
        assert!(
            (loss - want).abs() <= 1e-3 * want.abs().max(1.0),
            "step {step}: resumed loss {loss}, uninterrupted {want}"
        );
    }
    assert!(!killed.join("checkpoints").exists());
    let generated = ok(&run(&[
        "generate",
        "--model",
        killed.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "8",
        "--json",
    ]));
    let g: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(g["generated_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn tune_runs_the_whole_job_and_refuses_bad_prompts() {
    let f = Fixture::new();
    let home = f.p("home");
    let tune = |args: &[&str]| {
        bin()
            .env("FIXPOINT_HOME", &home)
            .arg("tune")
            .args(args)
            .output()
            .expect("binary runs")
    };
    let model = f.model.to_str().unwrap();
    let out = tune(&[
        "--model",
        model,
        "--prompts",
        f.prompts.to_str().unwrap(),
        "--name",
        "tiny tuned",
        "--block",
        "4",
        "--max-new",
        "8",
        "--eval-tokens",
        "4",
        "--steps",
        "2",
        "--json-progress",
    ]);
    let stdout = ok(&out);
    let job: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(job["status"], "done");
    assert_eq!(job["history"].as_array().unwrap().len(), 2);
    assert!(job["after"]["tokens_per_iteration"].as_f64().unwrap() >= 1.0);
    assert!(home.join("trained/tiny tuned/model.safetensors").exists());
    let listed = String::from_utf8_lossy(&tune(&["--list"]).stdout).into_owned();
    assert!(
        listed.contains("tiny tuned") && listed.contains("Done"),
        "{listed}"
    );

    let one = f.p("one.txt");
    std::fs::write(&one, "only one prompt\n").unwrap();
    assert_error(
        &tune(&["--model", model, "--prompts", one.to_str().unwrap()]),
        "not enough",
    );
    assert_error(&tune(&["--resume", "job-0"]), "job-0");
}
