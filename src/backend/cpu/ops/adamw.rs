//! The optimizer on the CPU: AdamW state on the host, the global-norm sum of squares.

use crate::backend::HostTensor;
use crate::backend::{AdamStep, ParamState, Region};
use anyhow::{ensure, Result};

pub(crate) fn opt_write(s: &mut ParamState, host: &ParamState) -> Result<()> {
    let n = s.master.len();
    ensure!(
        host.master.len() == n && host.m.len() == n && host.v.len() == n,
        "optimizer state of {} values written with {}/{}/{}",
        n,
        host.master.len(),
        host.m.len(),
        host.v.len()
    );
    *s = host.clone();
    Ok(())
}

pub(crate) fn sum_squares(g: &HostTensor) -> Result<f64> {
    Ok(g.data.iter().map(|&x| x as f64 * x as f64).sum())
}

pub(crate) fn adamw_update(
    s: &mut ParamState,
    g: &HostTensor,
    w: &mut HostTensor,
    reg: Region,
    a: &AdamStep,
) -> Result<()> {
    ensure!(
        g.numel() == s.master.len() && reg.numel(&w.shape) == s.master.len(),
        "adamw: gradient of {} values, state of {}, region {reg:?} of {:?}",
        g.numel(),
        s.master.len(),
        w.shape
    );
    a.apply(s, &g.data);
    let shape = reg.shape(&w.shape);
    super::rows::write_region(w, reg, &HostTensor::new(shape, s.master.clone()))
}
