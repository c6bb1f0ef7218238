#!/usr/bin/env python3
"""Per-section timing of the CPU forward, for finding where a forward's time goes.

Patches src/model/cpu.rs in place with timers around each step of a layer (norms and
quantization, the q/k/v, o, gate/up and down matmuls, RoPE and cache writes, attention, SwiGLU,
the LM head, the logits buffer). Every 100 forwards, with FP_SECT set, it prints the average ms
per forward of each section on stderr. Not for committing: restore with
`git checkout src/model/cpu.rs`.

    scripts/dev/time_sections.py && cargo build --release
    FP_SECT=1 target/release/fixpoint bench --prompts one.jsonl --max-tokens 1 --blocks 2 \
        --cost-sizes 8 --repetitions 300 --json 2>&1 >/dev/null | grep 'm=8 '

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
            rms_norm(""","""        let mut tt = std::time::Instant::now();
        macro_rules! lap { ($i:expr) => {{ let n = std::time::Instant::now(); SECT[$i].fetch_add((n - tt).as_nanos() as u64, std::sync::atomic::Ordering::Relaxed); tt = n; }}; }
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(""")
rep("""            acts.quantize(&normed, m, h);
            matmul(&layer.qkv_proj, &acts, &mut qkv);
""","""            acts.quantize(&normed, m, h);
            lap!(0);
            matmul(&layer.qkv_proj, &acts, &mut qkv);
            lap!(1);
""")
rep("""            let att = crate::kernels::causal_attention(""","""            lap!(2);
            let att = crate::kernels::causal_attention(""")
rep("""            acts.quantize(&att, m, q_dim);
            matmul(&layer.o_proj, &acts, &mut proj);
""","""            lap!(3);
            acts.quantize(&att, m, q_dim);
            lap!(0);
            matmul(&layer.o_proj, &acts, &mut proj);
            lap!(4);
""")
rep("""            acts.quantize(&normed, m, h);
            matmul(&layer.gate_up_proj, &acts, &mut gate_up);
            swiglu(&gate_up, ff, &mut act);
            acts.quantize(&act, m, ff);
            matmul(&layer.down_proj, &acts, &mut proj);
""","""            acts.quantize(&normed, m, h);
            lap!(0);
            matmul(&layer.gate_up_proj, &acts, &mut gate_up);
            lap!(5);
            swiglu(&gate_up, ff, &mut act);
            lap!(6);
            acts.quantize(&act, m, ff);
            lap!(0);
            matmul(&layer.down_proj, &acts, &mut proj);
            lap!(7);
""")
rep("""        let mut out = vec![0f32; rows * cfg.vocab_size];
        matmul(""","""        lap!(0);
        let mut out = vec![0f32; rows * cfg.vocab_size];
        lap!(9);
        matmul(""")
rep("""            &mut out,
        );
        Ok(out)""","""            &mut out,
        );
        lap!(8);
        SECT[10].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if SECT[10].load(std::sync::atomic::Ordering::Relaxed) % 100 == 0 && std::env::var("FP_SECT").is_ok() {
            let names=["serial","qkv","rope","attn","o","gateup","swiglu","down","lmhead","alloc"];
            let v: Vec<String> = names.iter().enumerate().map(|(i,n)| format!("{n}={:.3}", SECT[i].swap(0, std::sync::atomic::Ordering::Relaxed) as f64/1e8)).collect();
            eprintln!("m={m} per-forward ms: {}", v.join(" "));
        }
        Ok(out)""")
rep("#[derive(Debug, Clone)]\nstruct Block","static SECT: [std::sync::atomic::AtomicU64; 11] = [const { std::sync::atomic::AtomicU64::new(0) }; 11];\n\n#[derive(Debug, Clone)]\nstruct Block")
open(p,'w').write(s)
