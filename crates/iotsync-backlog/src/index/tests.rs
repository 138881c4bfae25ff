//! Unit tests of the index (no I/O).
use super::*;
use crate::codec::Enc;
use crate::config::BacklogConfig;
use crate::types::{ConsumerId, GroupSpec};
use iotsync_core::SyncMessage;
use iotsync_core::{Envelope, MessageKind};

const T0: i64 = 1_700_000_000_000;

fn index_with_group() -> (Index, Enc) {
    let mut ix = Index::new(&BacklogConfig::default(), 1, SpillPool::unbounded());
    let mut log = Enc::default();
    let p = ix.ensure_project(&"p".parse().unwrap(), &mut log);
    ix.create_group(p, &"g".parse().unwrap(), &GroupSpec::all(), &mut log)
        .unwrap();
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
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(1), 10, T0, &mut log)), [a]);
    ix.written(0, b, 1, 0, 10);
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(1), 10, T0, &mut log)), [b]);
    ix.verify().unwrap();
}

#[test]
fn parked_message_is_released_when_the_key_holder_is_acked() {
    let (mut ix, mut log) = index_with_group();
    let a = append(&mut ix, &mut log, "dev", true);
    let b = append(&mut ix, &mut log, "dev", true);
    let first = ix.lease(0, 0, ConsumerId(1), 1, T0, &mut log);
    assert_eq!(seqs(&first), [a]);
    // Another consumer meets b while consumer 1 holds the key: parked.
    assert!(ix.lease(0, 0, ConsumerId(2), 10, T0, &mut log).is_empty());
    assert_eq!(ix.projects[0].groups[0].as_ref().unwrap().parked, 1);
    assert!(ix.settle(&first[0].token, TokenOp::Ack, T0, &mut log));
    assert_eq!(seqs(&ix.lease(0, 0, ConsumerId(2), 10, T0, &mut log)), [b]);
    ix.verify().unwrap();
}

#[test]
fn failed_write_removes_the_message_from_the_index() {
    let (mut ix, mut log) = index_with_group();
    let a = append(&mut ix, &mut log, "k", false);
    ix.unwritten(0, a);
    assert_eq!(ix.projects[0].live, 0);
    assert_eq!(ix.projects[0].groups[0].as_ref().unwrap().stacked, 0);
    assert!(ix.lease(0, 0, ConsumerId(1), 10, T0, &mut log).is_empty());
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

#[test]
fn the_key_holder_gets_a_devices_next_messages_pipelined_in_order() {
    let (mut ix, mut log) = index_with_group();
    let m: Vec<u64> = (0..5)
        .map(|_| append(&mut ix, &mut log, "dev", true))
        .collect();
    let other = append(&mut ix, &mut log, "dev2", true);
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(1), 3, T0, &mut log)),
        m[..3]
    );
    // Consumer 2 cannot take the held key's messages, but takes the other key.
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(2), 10, T0, &mut log)),
        [other]
    );
    // The holder takes what was parked for it, in order, before anything else.
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(1), 10, T0, &mut log)),
        m[3..]
    );
    ix.verify().unwrap();
}

#[test]
fn a_freed_key_goes_to_the_next_consumer_with_all_its_parked_messages() {
    let (mut ix, mut log) = index_with_group();
    let m: Vec<u64> = (0..4)
        .map(|_| append(&mut ix, &mut log, "dev", true))
        .collect();
    let first = ix.lease(0, 0, ConsumerId(1), 1, T0, &mut log);
    assert!(ix.lease(0, 0, ConsumerId(2), 10, T0, &mut log).is_empty());
    assert!(ix.settle(&first[0].token, TokenOp::Ack, T0, &mut log));
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(2), 10, T0, &mut log)),
        m[1..]
    );
    ix.verify().unwrap();
}

#[test]
fn a_schedule_dead_letters_after_its_last_delivery() {
    let (mut ix, mut log) = index_with_group();
    let spec = GroupSpec {
        filter: Default::default(),
        retry: crate::types::GroupRetry::Schedule {
            delays_ms: vec![10, 30],
            max_deliveries: 3,
        },
    };
    ix.create_group(0, &"g".parse().unwrap(), &spec, &mut log)
        .unwrap();
    let a = append(&mut ix, &mut log, "dev", true);
    let mut now = T0;
    for (attempt, delay) in [(1, 10), (2, 30)] {
        let l = ix.lease(0, 0, ConsumerId(1), 10, now, &mut log);
        assert_eq!(seqs(&l), [a]);
        assert_eq!(l[0].attempts, attempt);
        assert!(ix.settle(&l[0].token, TokenOp::Nack, now, &mut log));
        assert!(ix
            .lease(0, 0, ConsumerId(1), 10, now + delay - 1, &mut log)
            .is_empty());
        now += delay;
    }
    let l = ix.lease(0, 0, ConsumerId(1), 10, now, &mut log);
    assert_eq!(l[0].attempts, 3);
    assert!(ix.settle(&l[0].token, TokenOp::Nack, now, &mut log));
    let g = ix.projects[0].groups[0].as_ref().unwrap();
    assert_eq!(g.dead.get(&a).map(|d| d.attempts), Some(3));
    assert_eq!(g.stacked, 0);
    ix.verify().unwrap();
}

#[test]
fn a_filter_routes_at_append() {
    let (mut ix, mut log) = index_with_group();
    let spec = GroupSpec {
        filter: iotsync_core::GroupFilter::data_class(iotsync_core::DataClass::User),
        retry: Default::default(),
    };
    ix.create_group(0, &"users".parse().unwrap(), &spec, &mut log)
        .unwrap();
    // An event is device data: only group "g" takes it.
    append(&mut ix, &mut log, "dev", true);
    let p = &ix.projects[0];
    assert_eq!(p.groups[0].as_ref().unwrap().stacked, 1);
    assert_eq!(p.groups[1].as_ref().unwrap().stacked, 0);
    assert_eq!(p.groups[1].as_ref().unwrap().counters.appended, 0);
    ix.verify().unwrap();
}

#[test]
fn a_redelivery_to_another_consumer_does_not_let_later_messages_overtake() {
    let (mut ix, mut log) = index_with_group();
    let m: Vec<u64> = (0..4)
        .map(|_| append(&mut ix, &mut log, "dev", true))
        .collect();
    let first = ix.lease(0, 0, ConsumerId(2), 1, T0, &mut log);
    assert!(ix.settle(&first[0].token, TokenOp::Nack, T0, &mut log));
    // Consumer 2 still holds the key: m1 goes to it, pipelined past the waiting m0.
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(2), 1, T0, &mut log)),
        [m[1]]
    );
    // Consumer 1 takes m0's redelivery; m2 must not go to it while m1 is out to 2.
    let later = T0 + 10_000;
    assert_eq!(
        seqs(&ix.lease(0, 0, ConsumerId(1), 5, later, &mut log)),
        [m[0]]
    );
    assert!(ix.lease(0, 0, ConsumerId(2), 5, later, &mut log).is_empty());
    ix.verify().unwrap();
}
