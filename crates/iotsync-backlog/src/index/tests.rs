//! Unit tests of the index (no I/O).
use super::*;
use crate::codec::Enc;
use crate::config::BacklogConfig;
use crate::types::ConsumerId;
use iotsync_core::SyncMessage;
use iotsync_core::{Envelope, MessageKind};

const T0: i64 = 1_700_000_000_000;

fn index_with_group() -> (Index, Enc) {
    let mut ix = Index::new(&BacklogConfig::default(), 1, SpillPool::unbounded());
    let mut log = Enc::default();
    let p = ix.ensure_project(&"p".parse().unwrap(), &mut log);
    ix.create_group(p, &"g".parse().unwrap(), &mut log).unwrap();
    (ix, log)
}

fn append(ix: &mut Index, log: &mut Enc, key: &str, written: bool) -> u64 {
    let m = SyncMessage {
        project_id: "p".parse().unwrap(),
        kind: MessageKind::EventPost,
        product_key: None,
        ordering_key: key.into(),
        envelope: Envelope {
            topic: "/t".into(),
            message_id: "m".parse().unwrap(),
            generate_time: T0,
            payload: vec![],
        },
    };
    let (pseq, off, len) = ix.append(0, &m, log).unwrap();
    if written {
        ix.written(0, pseq, 1, off as u32, len as u32);
    }
    pseq
}

fn seqs(picks: &[Pick]) -> Vec<u64> {
    picks.iter().map(|p| p.token.seq).collect()
}

#[test]
fn a_message_is_not_leased_before_it_is_durable() {
    let (mut ix, mut log) = index_with_group();
    let a = append(&mut ix, &mut log, "k1", true);
    let b = append(&mut ix, &mut log, "k2", false);
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(1), 10, T0)), [a]);
    ix.written(0, b, 1, 0, 10);
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(1), 10, T0)), [b]);
    ix.verify().unwrap();
}

#[test]
fn parked_message_is_released_when_the_key_holder_is_acked() {
    let (mut ix, mut log) = index_with_group();
    let a = append(&mut ix, &mut log, "dev", true);
    let b = append(&mut ix, &mut log, "dev", true);
    let first = ix.lease(0, 0, ConsumerId(1), 10, T0);
    assert_eq!(seqs(&first), [a]);
    assert_eq!(ix.projects[0].groups[0].as_ref().unwrap().parked, 1);
    assert!(ix.lease(0, 0, ConsumerId(2), 10, T0).is_empty());
    assert!(ix.settle(&first[0].token, TokenOp::Ack, T0, &mut log));
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(2), 10, T0)), [b]);
    ix.verify().unwrap();
}

#[test]
fn failed_write_removes_the_message_from_the_index() {
    let (mut ix, mut log) = index_with_group();
    let a = append(&mut ix, &mut log, "k", false);
    ix.unwritten(0, a);
    assert_eq!(ix.projects[0].live, 0);
    assert_eq!(ix.projects[0].groups[0].as_ref().unwrap().stacked, 0);
    assert!(ix.lease(0, 0, ConsumerId(1), 10, T0).is_empty());
    ix.verify().unwrap();
}

#[test]
fn expiry_is_never_early_and_at_most_a_second_late() {
    let day = 86_400_000;
    let gen = T0 + 500;
    assert!(gen_s(gen) >= cutoff_s(gen + day - 1, day));
    assert!(gen_s(gen) >= cutoff_s(gen + day, day));
    assert!(gen_s(gen) < cutoff_s(gen + day + 1000, day));
}
