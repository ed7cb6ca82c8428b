//! Training: divergence and non-finite losses, and resuming with other settings.

use super::{absent, fail, nothing, ok, split, Case, Env, Out, Q0, TUNE};

pub fn cases() -> Vec<Case> {
    let base = TUNE.replace("--steps 1", "--steps 4");
    let first = base.clone();
    let prior = move |e: &Env| {
        let o = e.run(&split(&format!("{first} --out r --checkpoint-every 2")));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    };
    let p2 = prior.clone();
    let p3 = prior.clone();
    let p4 = prior.clone();
    let resume = format!("{base} --out r --checkpoint-every 2 --resume");
    vec![
        fail(
            "train: diverges at step 1",
            nothing,
            &format!("{TUNE} --lr 3e38 --weight-decay 0 --out o"),
            &["step 1", "diverged", Q0, "not finite"],
        )
        .after(|e: &Env, _: &Out| {
            let bad = [
                "o/model.safetensors",
                "o/checkpoints/latest",
                "o/checkpoints/step-000001",
            ]
            .iter()
            .find(|p| e.p(p).exists())
            .copied();
            match bad {
                Some(p) => Err(format!("{p} was written")),
                None => Ok(()),
            }
        }),
        fail(
            "train: NaN loss names the step",
            nothing,
            &format!(
                "{} --lr 1e30 --checkpoint-every 1 --out o",
                TUNE.replace("--steps 1", "--steps 3")
            ),
            &["step 2", "not finite", "step-000001"],
        )
        .after(absent("o/model.safetensors")),
        fail(
            "resume: other --lr",
            prior,
            &format!("{resume} --lr 1e-3"),
            &["--lr", "0.001"],
        ),
        fail(
            "resume: other data",
            move |e: &Env| {
                p2(e);
                let t = String::from_utf8(e.read("train.jsonl"))
                    .unwrap()
                    .replace("Paris", "Lyon");
                e.write("train.jsonl", t);
            },
            &resume,
            &["other data", "--data"],
        ),
        fail(
            "resume: other --steps",
            p3,
            &resume.replace("--steps 4", "--steps 6"),
            &["--steps"],
        ),
        ok("resume: same settings", p4, &resume, |_: &Env, o: &Out| {
            o.stderr
                .contains("resuming at step 4")
                .then_some(())
                .ok_or("did not resume".into())
        }),
    ]
}
