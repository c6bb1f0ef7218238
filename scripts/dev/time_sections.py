#!/usr/bin/env python3
"""Per-section timing of the CPU forward, for finding where a forward's time goes.

Patches src/model/cpu.rs in place with timers around each step of a layer (norms and
quantization, the q/k/v, o, gate/up and down matmuls, RoPE and cache writes, attention, SwiGLU,
the LM head). Forwards of 1, 2, 4, 8 and 16 tokens are timed apart (other sizes together).
Every 100 forwards of a size, with FP_SECT set, it prints the average ms per forward of each
section on stderr. Not for committing: restore with `git checkout src/model/cpu.rs` (which also
drops any other uncommitted change to that file).

    scripts/dev/time_sections.py && cargo build --release
    FP_SECT=1 target/release/fixpoint bench --prompts one.jsonl --max-tokens 1 --blocks 2 \
        --cost-sizes 1,8,16 --repetitions 400 2>&1 >/dev/null | grep per-forward

Compare two builds by running them alternately, several times each: on a shared machine a
single run proves little. The patch matches the source text; if the forward changed, update
the strings below.
"""
import os
import sys

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
p='src/model/cpu.rs'; s=open(p).read()
def rep(a,b):
    global s
    if a not in s:
        sys.exit(f"time_sections.py: already patched, or the forward changed; no match for: {a[:60]!r}")
    s=s.replace(a,b,1)
rep("""        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(""","""        let sect = &SECT[match m { 1 => 0, 2 => 1, 4 => 2, 8 => 3, 16 => 4, _ => 5 }];
        let mut tt = std::time::Instant::now();
        macro_rules! lap { ($i:expr) => {{ let n = std::time::Instant::now(); sect[$i].fetch_add((n - tt).as_nanos() as u64, std::sync::atomic::Ordering::Relaxed); tt = n; }}; }
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(""")
rep("""            acts.quantize(normed, m, h);
            matmul(&layer.qkv_proj, acts, qkv);
""","""            acts.quantize(normed, m, h);
            lap!(0);
            matmul(&layer.qkv_proj, acts, qkv);
            lap!(1);
""")
rep("""            crate::kernels::causal_attention(""","""            lap!(2);
            crate::kernels::causal_attention(""")
rep("""            acts.quantize(att, m, q_dim);
            matmul(&layer.o_proj, acts, proj);
""","""            lap!(3);
            acts.quantize(att, m, q_dim);
            lap!(0);
            matmul(&layer.o_proj, acts, proj);
            lap!(4);
""")
rep("""            acts.quantize(normed, m, h);
            matmul(&layer.gate_up_proj, acts, gate_up);
            swiglu(gate_up, ff, act);
            acts.quantize(act, m, ff);
            matmul(&layer.down_proj, acts, proj);
""","""            acts.quantize(normed, m, h);
            lap!(0);
            matmul(&layer.gate_up_proj, acts, gate_up);
            lap!(5);
            swiglu(gate_up, ff, act);
            lap!(6);
            acts.quantize(act, m, ff);
            lap!(0);
            matmul(&layer.down_proj, acts, proj);
            lap!(7);
""")
rep("""        acts.quantize(normed, rows, h);
        matmul(""","""        acts.quantize(normed, rows, h);
        lap!(0);
        matmul(""")
rep("""            sized(out, rows * cfg.vocab_size),
        );
        cache.buffers = bufs;""","""            sized(out, rows * cfg.vocab_size),
        );
        lap!(8);
        let _ = tt;
        cache.buffers = bufs;
        let count = sect[9].fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if count % 100 == 0 && std::env::var("FP_SECT").is_ok() {
            let names = ["serial", "qkv", "rope", "attn", "o", "gateup", "swiglu", "down", "lmhead"];
            let v: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{n}={:.3}", sect[i].swap(0, std::sync::atomic::Ordering::Relaxed) as f64 / 1e8)).collect();
            eprintln!("m={m} per-forward ms: {}", v.join(" "));
        }""")
rep("#[derive(Debug, Clone)]\nstruct Block","static SECT: [[std::sync::atomic::AtomicU64; 10]; 6] = [const { [const { std::sync::atomic::AtomicU64::new(0) }; 10] }; 6];\n\n#[derive(Debug, Clone)]\nstruct Block")
open(p,'w').write(s)
