//! What is saved is what the user has: each frozen tensor in its own dtype, bit for bit (a
//! mixed f16/f32 model stays mixed), `--save-dtype f16` refuses values that would become
//! inf, and outputs carry the permissions the umask gives.

use super::{fail, ok, split, Case, Env, Out, TUNE};
use pinpoint::model::checkpoint::{load_tensors, save_safetensors_with, HostTensor, StoreDtype};
use std::collections::BTreeMap;

/// Rewrite `m/model.safetensors` with each tensor in `dtype_of(name)`, after `edit`.
fn rewrite(e: &Env, dtype_of: fn(&str) -> StoreDtype, edit: fn(&str, &mut HostTensor)) {
    let p = e.p("m/model.safetensors");
    let mut t = load_tensors(std::slice::from_ref(&p)).unwrap();
    for (n, x) in t.tensors.iter_mut() {
        edit(n, x);
    }
    let named: Vec<(String, &HostTensor)> = t.tensors.iter().map(|(n, x)| (n.clone(), x)).collect();
    save_safetensors_with(&p, &named, &dtype_of, &[]).unwrap();
}

fn mlp_f16(n: &str) -> StoreDtype {
    if n.contains(".mlp.") || n.contains("norm") {
        StoreDtype::F16
    } else {
        StoreDtype::F32
    }
}

fn keep(_: &str, _: &mut HostTensor) {}

/// One huge value in layer 2's down projection (frozen by `--heads-list L0H0`).
fn huge(n: &str, t: &mut HostTensor) {
    if n == "model.layers.2.mlp.down_proj.weight" {
        t.data[5] = 1e5;
    }
}

/// name -> (dtype, bytes) of a safetensors file.
fn stored(e: &Env, rel: &str) -> BTreeMap<String, (String, Vec<u8>)> {
    let bytes = e.read(rel);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (format!("{:?}", v.dtype()), v.data().to_vec())))
        .collect()
}

/// Every tensor of `out` has the dtype it has in `m/`; every frozen one (all but layer 0's
/// attention, tuned by L0H0) the same bytes.
fn frozen_bit_for_bit(out: &'static str) -> impl Fn(&Env, &Out) -> Result<(), String> {
    move |e: &Env, _: &Out| {
        let (a, b) = (stored(e, "m/model.safetensors"), stored(e, out));
        for (n, (d, bytes)) in &a {
            let Some((d2, bytes2)) = b.get(n) else {
                return Err(format!("{n} missing from {out}"));
            };
            if d != d2 {
                return Err(format!("{n}: {d} in the model, {d2} saved"));
            }
            if !n.starts_with("model.layers.0.self_attn.") && bytes != bytes2 {
                return Err(format!("frozen {n} changed"));
            }
        }
        Ok(())
    }
}

pub fn cases() -> Vec<Case> {
    let tune = |extra: &str| format!("{TUNE} --out o {extra}");
    vec![
        ok(
            "saved: mixed f16/f32 model keeps each tensor's dtype",
            |e: &Env| rewrite(e, mlp_f16, keep),
            &tune(""),
            frozen_bit_for_bit("o/model.safetensors"),
        ),
        ok(
            "saved: bf16 model saved bf16, frozen bit for bit",
            |e: &Env| rewrite(e, |_| StoreDtype::BF16, keep),
            &tune(""),
            frozen_bit_for_bit("o/model.safetensors"),
        ),
        ok(
            "saved: mixed model checkpoints keep each dtype too",
            |e: &Env| rewrite(e, mlp_f16, keep),
            &tune("--checkpoint-every 1"),
            frozen_bit_for_bit("o/checkpoints/step-000001/model.safetensors"),
        ),
        ok(
            "saved: f16 attention, f32 rest",
            |e: &Env| {
                rewrite(
                    e,
                    |n| {
                        if n.contains("attn") {
                            StoreDtype::F16
                        } else {
                            StoreDtype::F32
                        }
                    },
                    keep,
                )
            },
            &tune(""),
            frozen_bit_for_bit("o/model.safetensors"),
        ),
        fail(
            "saved: --save-dtype f16 with a value past 65504",
            |e: &Env| rewrite(e, |_| StoreDtype::F32, huge),
            &tune("--save-dtype f16"),
            &[
                "model.layers.2.mlp.down_proj.weight",
                "float16",
                "100000",
                "inf",
            ],
        )
        .after(super::absent("o/model.safetensors")),
        fail(
            "saved: --save-dtype f16 with a large negative value",
            |e: &Env| {
                rewrite(
                    e,
                    |_| StoreDtype::F32,
                    |n, t| {
                        if n == "model.layers.1.mlp.up_proj.weight" {
                            t.data[0] = -7e4;
                        }
                    },
                )
            },
            &tune("--save-dtype f16"),
            &["model.layers.1.mlp.up_proj.weight", "float16", "-70000"],
        ),
        ok(
            "saved: --save-dtype bf16 holds the same large value",
            |e: &Env| rewrite(e, |_| StoreDtype::F32, huge),
            &tune("--save-dtype bf16"),
            |e: &Env, _: &Out| {
                let s = stored(e, "o/model.safetensors");
                s.values()
                    .all(|(d, _)| d == "BF16")
                    .then_some(())
                    .ok_or("not all bf16".into())
            },
        ),
    ]
}

/// Outputs get 0666 / 0777 masked by the umask (not 0600): run `tune` under umasks 027 and
/// 002 and check the mode of every file it wrote.
pub fn umask_modes() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    for (mask, file_mode) in [(0o027u32, 0o640u32), (0o002, 0o664), (0o077, 0o600)] {
        let e = Env::new();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"));
        cmd.args(split(&format!("{TUNE} --out o --checkpoint-every 1")))
            .current_dir(&e.root)
            .env("PINPOINT_HOME", e.root.join("home"));
        // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for f in [
            "o/model.safetensors",
            "o/config.json",
            "o/tune_summary.json",
            "o/tokenizer.json",
            "o/checkpoints/latest",
            "o/checkpoints/step-000001/tune_state.json",
        ] {
            let m = std::fs::metadata(e.p(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, file_mode, "umask {mask:o}: {f} has mode {m:o}");
        }
        let d = std::fs::metadata(e.p("o/checkpoints"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            d,
            0o777 & !mask,
            "umask {mask:o}: o/checkpoints has mode {d:o}"
        );
    }
}
