//! The nodes and edges of a circuit and their TransformerLens names.
//!
//! A sender is a head's output (`blocks.L.attn.hook_z[:, -1, h]` through `o_proj`) or an
//! MLP's output (`blocks.L.hook_mlp_out`), both at the last position. A receiver is a head,
//! read through one input channel (its query, key or value, `blocks.L.attn.hook_q/k/v`),
//! or the logits (the final residual, `blocks.{L-1}.hook_resid_post`).

use crate::heads::{HeadId, HookPoint};
use serde::{Deserialize, Serialize};

/// An input of a receiving head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Q,
    K,
    V,
    /// The logits' one input, the final residual.
    Resid,
}

impl Channel {
    pub const QKV: [Channel; 3] = [Channel::Q, Channel::K, Channel::V];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Q => "q",
            Channel::K => "k",
            Channel::V => "v",
            Channel::Resid => "resid",
        }
    }

    /// The hook point of this channel of a head in layer `l` (None for `Resid`).
    pub fn hook(self, l: usize) -> Option<HookPoint> {
        match self {
            Channel::Q => Some(HookPoint::Q(l)),
            Channel::K => Some(HookPoint::K(l)),
            Channel::V => Some(HookPoint::V(l)),
            Channel::Resid => None,
        }
    }
}

/// A component whose last-position output is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sender {
    Head(HeadId),
    Mlp(usize),
}

impl Sender {
    pub fn layer(self) -> usize {
        match self {
            Sender::Head(h) => h.layer,
            Sender::Mlp(l) => l,
        }
    }

    /// `L3H5` or `MLP3`.
    pub fn label(self) -> String {
        match self {
            Sender::Head(h) => h.to_string(),
            Sender::Mlp(l) => format!("MLP{l}"),
        }
    }

    /// TransformerLens' hook of the output: `blocks.3.attn.hook_z[:, -1, 5]` (through
    /// W_O) or `blocks.3.hook_mlp_out[:, -1]`.
    pub fn tl_name(self) -> String {
        match self {
            Sender::Head(h) => h.z_hook("-1"),
            Sender::Mlp(l) => format!("{}[:, -1]", HookPoint::MlpOut(l).tl_name()),
        }
    }

    /// Every head of layers `0..n_layers` (layer-major) and the MLP after each layer's heads:
    /// `L0H0 .. L0H{H-1}, MLP0, L1H0, ...`.
    pub fn all(n_layers: usize, n_heads: usize) -> Vec<Sender> {
        let mut v = Vec::with_capacity(n_layers * (n_heads + 1));
        for l in 0..n_layers {
            v.extend((0..n_heads).map(|h| Sender::Head(HeadId::new(l, h))));
            v.push(Sender::Mlp(l));
        }
        v
    }
}

/// A component whose input is recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Receiver {
    Head(HeadId),
    Logits,
}

impl Receiver {
    /// The layer whose input the receiver reads (`n_layers` for the logits).
    pub fn layer(self, n_layers: usize) -> usize {
        match self {
            Receiver::Head(h) => h.layer,
            Receiver::Logits => n_layers,
        }
    }

    pub fn label(self) -> String {
        match self {
            Receiver::Head(h) => h.to_string(),
            Receiver::Logits => "logits".into(),
        }
    }

    /// The channels this receiver has.
    pub fn channels(self) -> &'static [Channel] {
        match self {
            Receiver::Head(_) => &Channel::QKV,
            Receiver::Logits => &[Channel::Resid],
        }
    }

    /// TransformerLens' hook of the receiving input at the last position:
    /// `blocks.3.attn.hook_q[:, -1, 5]`, or `blocks.{L-1}.hook_resid_post[:, -1]`.
    pub fn tl_name(self, channel: Channel, n_layers: usize) -> String {
        match (self, channel.hook(self.layer(n_layers))) {
            (Receiver::Head(h), Some(p)) => format!("{}[:, -1, {}]", p.tl_name(), h.head),
            _ => format!(
                "blocks.{}.hook_resid_post[:, -1]",
                n_layers.saturating_sub(1)
            ),
        }
    }
}

/// One edge: `sender -> receiver` through `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    pub sender: Sender,
    pub receiver: Receiver,
    pub channel: Channel,
}

impl Edge {
    /// A sender feeds a receiver only from an earlier layer (an MLP runs after its layer's
    /// heads, so it feeds the next layer's heads first).
    pub fn has_path(&self, n_layers: usize) -> bool {
        self.sender.layer() < self.receiver.layer(n_layers)
    }

    /// `L2H1 -> L5H3 (q)`.
    pub fn label(&self) -> String {
        format!(
            "{} -> {} ({})",
            self.sender.label(),
            self.receiver.label(),
            self.channel.name()
        )
    }
}

/// Every edge of `receivers`: each sender of `senders` into each channel, in the order
/// receiver, channel, sender (edges without a path included: they score 0).
pub fn edges_of(receivers: &[Receiver], senders: &[Sender]) -> Vec<Edge> {
    let mut v = vec![];
    for &receiver in receivers {
        for &channel in receiver.channels() {
            v.extend(senders.iter().map(|&sender| Edge {
                sender,
                receiver,
                channel,
            }));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let h = |l, h| HeadId::new(l, h);
        let e = Edge {
            sender: Sender::Head(h(1, 2)),
            receiver: Receiver::Head(h(3, 4)),
            channel: Channel::K,
        };
        assert_eq!(e.label(), "L1H2 -> L3H4 (k)");
        assert_eq!(e.sender.tl_name(), "blocks.1.attn.hook_z[:, -1, 2]");
        assert_eq!(
            e.receiver.tl_name(Channel::K, 6),
            "blocks.3.attn.hook_k[:, -1, 4]"
        );
        assert_eq!(
            Receiver::Logits.tl_name(Channel::Resid, 6),
            "blocks.5.hook_resid_post[:, -1]"
        );
        assert_eq!(Sender::Mlp(2).tl_name(), "blocks.2.hook_mlp_out[:, -1]");
        assert!(e.has_path(6));
        let same = Edge {
            sender: Sender::Mlp(3),
            ..e
        };
        assert!(!same.has_path(6));
        let to_logits = Edge {
            sender: Sender::Mlp(5),
            receiver: Receiver::Logits,
            channel: Channel::Resid,
        };
        assert!(to_logits.has_path(6));
        assert_eq!(Sender::all(2, 2).len(), 6);
        assert_eq!(
            edges_of(&[Receiver::Head(h(1, 0))], &Sender::all(2, 2)).len(),
            18
        );
    }
}
