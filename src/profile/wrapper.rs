//! [`Profiled`]: a backend that runs every call on the wrapped backend and records its time,
//! its span and its analytic cost. The results are the inner backend's, bit for bit.

use super::cost::{self, Cost};
use super::{OpRec, Profile, SpanRec};
use crate::backend::HostTensor;
use crate::backend::{
    AdamStep, AttnShape, Backend, DeviceClock, Gemm, ParamState, Pattern, Region, SeqSpan,
    TrainBackend,
};
use anyhow::{ensure, Result};
use std::sync::Mutex;
use std::time::Instant;

/// Where the times of an op come from.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    Host(f64, f64),
    /// Indices of the device marks before and after.
    Device(usize, usize),
}

struct State {
    t0: Instant,
    /// The device mark taken at `t0` (device clock only).
    mark0: Option<usize>,
    ops: Vec<(&'static str, Option<usize>, Stamp, Cost)>,
    spans: Vec<SpanRec>,
    /// Per span: device marks at enter and exit.
    span_marks: Vec<(Option<usize>, Option<usize>)>,
    stack: Vec<usize>,
}

/// A profiling wrapper around backend `B` (see the module docs).
pub struct Profiled<B> {
    inner: B,
    elem: usize,
    clock: Option<Box<dyn DeviceClock>>,
    state: Mutex<State>,
}

impl<B: TrainBackend> Profiled<B> {
    /// Wrap `inner`; recording starts now (see [`Profiled::restart`]).
    pub fn new(inner: B) -> Result<Self> {
        let clock = inner.device_clock()?;
        let p = Self {
            elem: inner.elem_bytes(),
            inner,
            clock,
            state: Mutex::new(State {
                t0: Instant::now(),
                mark0: None,
                ops: vec![],
                spans: vec![],
                span_marks: vec![],
                stack: vec![],
            }),
        };
        p.restart()?;
        Ok(p)
    }
}

impl<B: Backend> Profiled<B> {
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while recording leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget everything recorded (a warm-up) and start the clock again, after the device
    /// has finished its queued work. Spans still open are refused.
    pub fn restart(&self) -> Result<()> {
        self.inner.synchronize()?;
        let mark0 = self.clock.as_ref().map(|c| c.mark()).transpose()?;
        let mut s = self.lock();
        ensure!(
            s.stack.is_empty(),
            "profile restarted inside span {:?}",
            s.stack.last().map(|&i| s.spans[i].label())
        );
        s.t0 = Instant::now();
        s.mark0 = mark0;
        s.ops.clear();
        s.spans.clear();
        s.span_marks.clear();
        Ok(())
    }

    /// Wait for the device, then what was recorded since the last start. Device times are
    /// read here, once; a span's device extent is that of the ops inside it (the host
    /// extent where it holds none).
    pub fn finish(&self) -> Result<Profile> {
        self.inner.synchronize()?;
        let times = match &self.clock {
            Some(c) => Some(c.resolve()?),
            None => None,
        };
        let s = self.lock();
        let wall_s = s.t0.elapsed().as_secs_f64();
        ensure!(
            s.stack.is_empty(),
            "profile finished inside span {:?}",
            s.stack.last().map(|&i| s.spans[i].label())
        );
        let at = |m: usize| -> f64 {
            let t = times.as_ref().expect("device marks come with device times");
            t[m] - s.mark0.map_or(0.0, |m0| t[m0])
        };
        let ops: Vec<OpRec> = s
            .ops
            .iter()
            .map(|&(name, span, stamp, cost)| {
                let (start, end) = match stamp {
                    Stamp::Host(a, b) => (a, b),
                    Stamp::Device(a, b) => (at(a), at(b)),
                };
                OpRec {
                    name,
                    span,
                    start,
                    end,
                    cost,
                }
            })
            .collect();
        let mut spans = s.spans.clone();
        if times.is_some() {
            for (i, sp) in spans.iter_mut().enumerate() {
                if let (Some(a), Some(b)) = s.span_marks[i] {
                    sp.start = at(a);
                    sp.end = at(b);
                }
            }
        }
        Ok(Profile {
            device: self.inner.device_name(),
            clock: if self.clock.is_some() {
                "device"
            } else {
                "host"
            },
            wall_s,
            ops,
            spans,
        })
    }

    /// Run `f` as op `name` of cost `cost`, timed.
    fn op<R>(&self, name: &'static str, cost: Cost, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let (stamp, r) = match &self.clock {
            None => {
                let t0 = self.lock().t0;
                let a = t0.elapsed().as_secs_f64();
                let r = f()?;
                (Stamp::Host(a, t0.elapsed().as_secs_f64()), r)
            }
            Some(c) => {
                let a = c.mark()?;
                c.range_push(name);
                let r = f();
                c.range_pop();
                let b = c.mark();
                // The call's own error first: it says more than a failed timestamp.
                let r = r?;
                (Stamp::Device(a, b?), r)
            }
        };
        let mut s = self.lock();
        let span = s.stack.last().copied();
        s.ops.push((name, span, stamp, cost));
        Ok(r)
    }

    /// Bytes per activation element on the wrapped backend.
    fn e(&self) -> usize {
        self.elem
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// `(rows, cols)` of a 2-D shape (a 1-D shape is one row).
fn rc(shape: &[usize]) -> (usize, usize) {
    match shape {
        [r, c] => (*r, *c),
        [c] => (1, *c),
        _ => (1, numel(shape)),
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Tensor = B::Tensor;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor> {
        self.op("upload", Cost::bytes(4.0 * t.numel() as f64), || {
            self.inner.upload(t)
        })
    }
    fn download(&self, t: &Self::Tensor) -> Result<HostTensor> {
        let n = numel(self.inner.shape(t));
        self.op("download", Cost::bytes(4.0 * n as f64), || {
            self.inner.download(t)
        })
    }
    fn edit_on_host(
        &self,
        t: &mut Self::Tensor,
        f: &mut dyn FnMut(&mut HostTensor) -> Result<bool>,
    ) -> Result<()> {
        let n = numel(self.inner.shape(t));
        self.op("edit_on_host", Cost::bytes(8.0 * n as f64), || {
            self.inner.edit_on_host(t, f)
        })
    }
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize] {
        self.inner.shape(t)
    }
    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor> {
        self.inner.reshape(t, shape)
    }
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor> {
        let c = Cost::bytes((numel(shape) * self.e()) as f64);
        self.op("zeros", c, || self.inner.zeros(shape))
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn uniform(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Self::Tensor> {
        let c = Cost::bytes((numel(shape) * self.e()) as f64);
        self.op("uniform", c, || {
            self.inner.uniform(shape, seed, scale, offset)
        })
    }
    fn reset_peak_memory(&self) -> Result<()> {
        self.inner.reset_peak_memory()
    }
    fn peak_memory(&self) -> Result<Option<u64>> {
        self.inner.peak_memory()
    }
    fn gemms(&self) -> &'static [Gemm] {
        self.inner.gemms()
    }
    fn span_enter(&self, kind: &'static str, index: Option<usize>) {
        let mark = self.clock.as_ref().and_then(|c| {
            c.range_push(&match index {
                Some(i) => format!("{kind} {i}"),
                None => kind.to_string(),
            });
            c.mark().ok()
        });
        let mut s = self.lock();
        let t = s.t0.elapsed().as_secs_f64();
        let parent = s.stack.last().copied();
        s.spans.push(SpanRec {
            kind,
            index,
            parent,
            start: t,
            end: t,
        });
        s.span_marks.push((mark, None));
        let i = s.spans.len() - 1;
        s.stack.push(i);
    }
    fn span_exit(&self) {
        let mark = self.clock.as_ref().and_then(|c| {
            let m = c.mark().ok();
            c.range_pop();
            m
        });
        let mut s = self.lock();
        if let Some(i) = s.stack.pop() {
            s.spans[i].end = s.t0.elapsed().as_secs_f64();
            s.span_marks[i].1 = mark;
        }
    }
    fn device_clock(&self) -> Result<Option<Box<dyn DeviceClock>>> {
        // One profiler per device queue: the wrapper's clock is its own.
        Ok(None)
    }
    fn linear_with_gemm(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        gemm: Gemm,
    ) -> Result<Self::Tensor> {
        let c = self.linear_cost(x, w);
        self.op("linear", c, || self.inner.linear_with_gemm(x, w, gemm))
    }
    fn embed(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor> {
        let d = rc(self.inner.shape(table)).1;
        let c = Cost::bytes((2 * ids.len() * d * self.e() + 4 * ids.len()) as f64);
        self.op("embed", c, || self.inner.embed(table, ids))
    }
    fn rmsnorm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Result<Self::Tensor> {
        let (n, d) = rc(self.inner.shape(x));
        self.op("rmsnorm", cost::rmsnorm(n, d, self.e()), || {
            self.inner.rmsnorm(x, w, eps)
        })
    }
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor> {
        let c = self.linear_cost(x, w);
        self.op("linear", c, || self.inner.linear(x, w))
    }
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()> {
        let c = cost::elementwise(numel(self.inner.shape(x)), 1.0, 2, 1, self.e());
        self.op("add", c, || self.inner.add_assign(x, y))
    }
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        let c = cost::elementwise(numel(self.inner.shape(x)), 3.0, 1, 1, self.e());
        self.op("rope", c, || {
            self.inner.rope(x, head_dim, positions, inv_freq)
        })
    }
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()> {
        let c = cost::elementwise(numel(self.inner.shape(x)), 1.0, 1, 1, self.e());
        self.op("scale", c, || self.inner.scale(x, s))
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(Self::Tensor, Vec<Pattern>)> {
        let (n, kv) = (rc(self.inner.shape(q)).0, rc(self.inner.shape(k)).0);
        let c = cost::attention(n, kv, spans, shape, self.e());
        self.op("attention", c, || {
            self.inner.attention(q, k, v, spans, shape, want)
        })
    }
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor> {
        let c = cost::elementwise(numel(self.inner.shape(gate)), 5.0, 2, 1, self.e());
        self.op("swiglu", c, || self.inner.swiglu(gate, up))
    }
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor> {
        let cols = rc(self.inner.shape(x)).1;
        let c = Cost::bytes((2 * rows.len() * cols * self.e()) as f64);
        self.op("gather_rows", c, || self.inner.gather_rows(x, rows))
    }
    fn scatter_rows(
        &self,
        dst: &mut Self::Tensor,
        rows: &[usize],
        src: &Self::Tensor,
    ) -> Result<()> {
        let cols = rc(self.inner.shape(src)).1;
        let c = Cost::bytes((2 * rows.len() * cols * self.e()) as f64);
        self.op("scatter_rows", c, || {
            self.inner.scatter_rows(dst, rows, src)
        })
    }
    fn write_slices(
        &self,
        x: &mut Self::Tensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()> {
        let c = Cost::bytes((values.numel() * (4 + self.e())) as f64);
        self.op("write_slices", c, || {
            self.inner.write_slices(x, rows, col0, values)
        })
    }
    fn norm_dot(
        &self,
        x: &Self::Tensor,
        norm: &Self::Tensor,
        eps: f32,
        w: &Self::Tensor,
    ) -> Result<HostTensor> {
        let ((n, d), m) = (rc(self.inner.shape(x)), rc(self.inner.shape(w)).0);
        let c = Cost::new(
            (2 * n * m * d + 4 * n * d) as f64,
            ((n * d + m * d + d) * self.e() + 4 * n * m) as f64,
        );
        self.op("norm_dot", c, || self.inner.norm_dot(x, norm, eps, w))
    }
}

impl<B: Backend> Profiled<B> {
    fn linear_cost(&self, x: &B::Tensor, w: &B::Tensor) -> Cost {
        let ((n, k), m) = (rc(self.inner.shape(x)), rc(self.inner.shape(w)).0);
        cost::linear(n, k, m, self.e())
    }
}

impl<B: TrainBackend> TrainBackend for Profiled<B> {
    type OptState = B::OptState;

    fn copy(&self, t: &Self::Tensor) -> Result<Self::Tensor> {
        let c = cost::elementwise(numel(self.inner.shape(t)), 0.0, 1, 1, self.e());
        self.op("copy", c, || self.inner.copy(t))
    }
    fn linear_bwd_input(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor> {
        let ((n, m), k) = (rc(self.inner.shape(dy)), rc(self.inner.shape(w)).1);
        self.op("linear_bwd_input", cost::linear(n, k, m, self.e()), || {
            self.inner.linear_bwd_input(dy, w)
        })
    }
    fn linear_bwd_input_sum(
        &self,
        parts: &[(&Self::Tensor, &Self::Tensor)],
    ) -> Result<Self::Tensor> {
        let mut c = Cost::default();
        for (dy, w) in parts {
            let ((n, m), k) = (rc(self.inner.shape(dy)), rc(self.inner.shape(w)).1);
            let p = cost::linear(n, k, m, self.e());
            c.flops += p.flops;
            c.bytes += p.bytes;
        }
        self.op("linear_bwd_input", c, || {
            self.inner.linear_bwd_input_sum(parts)
        })
    }
    fn linear_bwd_weight(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        reg: Region,
        dw_reg: &mut Self::Tensor,
    ) -> Result<()> {
        let ((n, m), k) = (rc(self.inner.shape(dy)), rc(self.inner.shape(x)).1);
        let c = cost::linear_bwd_weight(n, k, m, reg, self.e());
        self.op("linear_bwd_weight", c, || {
            self.inner.linear_bwd_weight(dy, x, reg, dw_reg)
        })
    }
    fn rmsnorm_bwd(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        dw: Option<&mut Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let (n, d) = rc(self.inner.shape(x));
        let c = cost::rmsnorm_bwd(n, d, dw.is_some(), self.e());
        self.op("rmsnorm_bwd", c, || {
            self.inner.rmsnorm_bwd(dy, x, w, eps, dw)
        })
    }
    fn rope_bwd(
        &self,
        dx: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        let c = cost::elementwise(numel(self.inner.shape(dx)), 3.0, 1, 1, self.e());
        self.op("rope_bwd", c, || {
            self.inner.rope_bwd(dx, head_dim, positions, inv_freq)
        })
    }
    fn attention_bwd(
        &self,
        dz: &Self::Tensor,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spans: &[SeqSpan],
        shape: AttnShape,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)> {
        let (n, kv) = (rc(self.inner.shape(q)).0, rc(self.inner.shape(k)).0);
        let c = cost::attention_bwd(n, kv, spans, shape, self.e());
        self.op("attention_bwd", c, || {
            self.inner.attention_bwd(dz, q, k, v, spans, shape)
        })
    }
    fn swiglu_bwd(
        &self,
        dact: &Self::Tensor,
        gate: &Self::Tensor,
        up: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let c = cost::elementwise(numel(self.inner.shape(gate)), 10.0, 3, 2, self.e());
        self.op("swiglu_bwd", c, || self.inner.swiglu_bwd(dact, gate, up))
    }
    fn embed_bwd(&self, dx: &Self::Tensor, ids: &[u32], dtable: &mut Self::Tensor) -> Result<()> {
        let c = cost::elementwise(numel(self.inner.shape(dx)), 1.0, 2, 1, self.e());
        self.op("embed_bwd", c, || self.inner.embed_bwd(dx, ids, dtable))
    }
    fn xent_fwd_bwd(
        &self,
        logits: &Self::Tensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, Self::Tensor)> {
        let (n, v) = rc(self.inner.shape(logits));
        self.op("xent", cost::xent(n, v, self.e()), || {
            self.inner.xent_fwd_bwd(logits, targets, scale)
        })
    }
    fn xent_fwd_bwd_owned(
        &self,
        logits: Self::Tensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, Self::Tensor)> {
        let (n, v) = rc(self.inner.shape(&logits));
        self.op("xent", cost::xent(n, v, self.e()), || {
            self.inner.xent_fwd_bwd_owned(logits, targets, scale)
        })
    }
    fn read_region(&self, t: &Self::Tensor, reg: Region) -> Result<HostTensor> {
        let c = Cost::bytes((2 * reg.numel(self.inner.shape(t)) * 4) as f64);
        self.op("read_region", c, || self.inner.read_region(t, reg))
    }
    fn write_region(&self, t: &mut Self::Tensor, reg: Region, src: &HostTensor) -> Result<()> {
        let c = Cost::bytes((src.numel() * (4 + self.e())) as f64);
        self.op("write_region", c, || self.inner.write_region(t, reg, src))
    }
    fn elem_bytes(&self) -> usize {
        self.inner.elem_bytes()
    }
    fn memory_info(&self) -> Option<(usize, usize)> {
        self.inner.memory_info()
    }
    fn opt_new(&self, master: &HostTensor) -> Result<Self::OptState> {
        let c = Cost::bytes((master.numel() * 4 * 4) as f64);
        self.op("opt_new", c, || self.inner.opt_new(master))
    }
    fn opt_read(&self, s: &Self::OptState) -> Result<ParamState> {
        self.op("opt_read", Cost::default(), || self.inner.opt_read(s))
    }
    fn opt_write(&self, s: &mut Self::OptState, host: &ParamState) -> Result<()> {
        self.op("opt_write", Cost::default(), || {
            self.inner.opt_write(s, host)
        })
    }
    fn sum_squares(&self, g: &Self::Tensor) -> Result<f64> {
        let c = cost::elementwise(numel(self.inner.shape(g)), 2.0, 1, 0, self.e());
        self.op("sum_squares", c, || self.inner.sum_squares(g))
    }
    fn adamw_update(
        &self,
        s: &mut Self::OptState,
        g: &Self::Tensor,
        w: &mut Self::Tensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        let c = cost::adamw(numel(self.inner.shape(g)), self.e());
        self.op("adamw", c, || self.inner.adamw_update(s, g, w, reg, a))
    }
}
