//! Rebuilding the index from the log at open. Records are applied in log order; a record
//! may name a project or group whose defining snapshot comes later (its first definition
//! was in a deleted segment), so projects and dead-letter marks are kept provisionally and
//! settled by `finish_replay`.

use iotsync_core::ProjectId;

use super::{
    gen_s, slot_meta, unreachable_id, DeadInfo, Group, Index, Project, CHUNK,
    MAX_GROUPS_PER_PROJECT,
};
use crate::codec::{DeadMark, MsgHead, ProjectSnapshot, RetainMarks};
use crate::types::GroupSpec;

impl Index {
    fn replay_project(&mut self, proj: u32) -> &mut Project {
        while self.projects.len() <= proj as usize {
            let idx = self.projects.len() as u32;
            let placeholder: ProjectId = match format!("unnamed-{idx}").parse() {
                Ok(p) => p,
                Err(_) => unreachable_id(),
            };
            let mut p = Project::new(
                idx,
                placeholder,
                self.default_retention_ms,
                self.keep_acked_default,
                self.pool.clone(),
            );
            p.named = false;
            self.projects.push(p);
        }
        &mut self.projects[proj as usize]
    }

    /// Replays a message record found at (seg, off, len).
    pub fn replay_msg(
        &mut self,
        h: &MsgHead,
        dead: Option<&[DeadMark]>,
        tries: Option<&[(u8, u32)]>,
        retain: Option<RetainMarks>,
        loc: (u32, u32, u32),
    ) {
        let p = self.replay_project(h.proj);
        if let Some(tries) = tries {
            // A relocated copy says where every group's attempt count stood.
            for gi in 0..MAX_GROUPS_PER_PROJECT as u8 {
                p.replay_prior.remove(&(gi, h.pseq));
            }
            for (gi, a) in tries {
                p.replay_prior.insert((*gi, h.pseq), *a);
            }
        }
        if p.slots.is_empty() {
            // Start where the log does (not with tombstones from 0).
            p.slots.reset(h.pseq);
        } else if h.pseq < p.base() {
            p.slots.grow_front_to(h.pseq);
        }
        p.slots.grow_back_to(h.pseq + 1);
        let g = gen_s(h.generate_time);
        if let Some(s) = p.slots.set_location(h.pseq, loc.0, loc.1, loc.2) {
            s.key = h.key_hash;
            s.gen_s = g;
            s.owners = h.owners;
            s.id_hash = h.id_hash;
            match retain {
                Some(r) => {
                    s.takers = r.takers;
                    s.dropped = r.dropped;
                    s.acked_s = r.acked_s;
                    s.meta = r.meta;
                }
                None => {
                    s.takers = h.owners;
                    s.dropped = 0;
                    s.acked_s = 0;
                    s.meta = slot_meta(h.generate_time);
                }
            }
        }
        p.note_chunk(h.pseq, g);
        match dead {
            None => {
                for (i, gr) in p.groups.iter_mut().enumerate() {
                    if let Some(gr) = gr {
                        if h.owners & (1 << i) != 0 {
                            gr.counters.appended += 1;
                        }
                    }
                }
            }
            Some(marks) => {
                for gi in 0..MAX_GROUPS_PER_PROJECT as u8 {
                    p.replay_dead.remove(&(gi, h.pseq));
                }
                for m in marks {
                    p.replay_dead.insert(
                        (m.group, h.pseq),
                        DeadInfo {
                            attempts: m.attempts,
                            at_ms: m.at_ms,
                        },
                    );
                }
            }
        }
    }

    fn replay_clear(&mut self, proj: u32, slot: u8, pseq: u64) -> bool {
        let p = self.replay_project(proj);
        // As live: a project that does not keep acknowledged messages lets go of one
        // nobody owes (so a later seek record finds what the live seek found). A project
        // not yet named by a snapshot keeps it for now; `finish_replay` lets it go.
        let let_go = p.named && !p.keep_acked;
        match p.slot_mut(pseq) {
            Some(s) if s.owners & (1 << slot) != 0 => {
                s.owners &= !(1 << slot);
                if let_go && s.owners == 0 && !s.expired() {
                    s.takers = 0;
                    s.dropped = 0;
                }
                true
            }
            _ => false,
        }
    }

    /// Attempt counts of a run of leases (kept while the message is owed).
    pub fn replay_leased(&mut self, proj: u32, slot: u8, first: u64, count: u32, attempts: u32) {
        let p = self.replay_project(proj);
        for pseq in first..first.saturating_add(count as u64) {
            p.replay_prior.insert((slot, pseq), attempts);
        }
    }

    fn replay_settled(&mut self, proj: u32, slot: u8, pseq: u64) {
        self.replay_project(proj).replay_prior.remove(&(slot, pseq));
    }

    pub fn replay_ack(&mut self, proj: u32, slot: u8, pseq: u64) {
        self.replay_settled(proj, slot, pseq);
        if self.replay_clear(proj, slot, pseq) {
            let p = &mut self.projects[proj as usize];
            p.replay_dead.remove(&(slot, pseq));
            if let Some(Some(g)) = p.groups.get_mut(slot as usize) {
                g.counters.acked += 1;
            }
        }
    }

    pub fn replay_reject(&mut self, proj: u32, slot: u8, pseq: u64, info: DeadInfo) {
        self.replay_settled(proj, slot, pseq);
        let p = self.replay_project(proj);
        if p.slot(pseq).is_some_and(|s| s.owners & (1 << slot) != 0) {
            p.replay_dead.insert((slot, pseq), info);
        }
        if let Some(Some(g)) = p.groups.get_mut(slot as usize) {
            g.counters.rejected += 1;
        }
    }

    pub fn replay_dead_retry(&mut self, proj: u32, slot: u8, pseq: u64) {
        self.replay_project(proj).replay_dead.remove(&(slot, pseq));
    }

    pub fn replay_dead_drop(&mut self, proj: u32, slot: u8, pseq: u64) {
        self.replay_dead_retry(proj, slot, pseq);
        self.replay_clear(proj, slot, pseq);
    }

    pub fn replay_group_create(&mut self, proj: u32, slot: u8, gen: u32, start: u64, name: &str) {
        let p = self.replay_project(proj);
        p.replay_prior.retain(|(g, _), _| *g != slot);
        if let (Some(s), Ok(name)) = (p.groups.get_mut(slot as usize), name.parse()) {
            *s = Some(Box::new(Group::new(name, GroupSpec::all(), gen, start)));
            p.next_gen = p.next_gen.max(gen + 1);
        }
    }

    pub fn replay_group_spec(&mut self, proj: u32, slot: u8, gen: u32, spec: GroupSpec) {
        let p = self.replay_project(proj);
        if let Some(Some(g)) = p.groups.get_mut(slot as usize) {
            if g.gen == gen {
                g.spec = spec;
            }
        }
    }

    pub fn replay_group_delete(&mut self, proj: u32, slot: u8) {
        let p = self.replay_project(proj);
        p.replay_dead.retain(|(g, _), _| *g != slot);
        p.replay_prior.retain(|(g, _), _| *g != slot);
        if (slot as usize) < MAX_GROUPS_PER_PROJECT {
            self.drop_group(proj, slot);
        }
    }

    pub fn replay_retention(&mut self, proj: u32, ms: i64) {
        self.replay_project(proj).retention_ms = ms;
    }

    pub fn replay_paused(&mut self, proj: u32, paused: bool) {
        self.replay_project(proj).paused = paused;
    }

    pub fn replay_seek(&mut self, proj: u32, slot: u8, gen: u32, from_ms: i64) {
        self.replay_project(proj);
        if (slot as usize) < MAX_GROUPS_PER_PROJECT {
            self.seek(proj, slot, from_ms, Some(gen), None);
        }
    }

    pub fn replay_keep_acked(&mut self, proj: u32, keep: bool) {
        self.replay_project(proj);
        self.set_keep_acked(proj, keep, None);
    }

    pub fn replay_expire(&mut self, proj: u32, cutoff: u32) {
        self.replay_project(proj);
        self.expire_project(proj, cutoff);
    }

    pub fn replay_snapshot(&mut self, s: &ProjectSnapshot) {
        let Ok(id) = s.id.parse::<ProjectId>() else {
            return;
        };
        let p = self.replay_project(s.proj);
        p.id = id.clone();
        let first_naming = !p.named;
        p.named = true;
        if p.next_pseq() < s.next_pseq {
            if p.slots.is_empty() {
                p.slots.reset(s.next_pseq);
            } else {
                p.slots.grow_back_to(s.next_pseq);
            }
        }
        p.retention_ms = s.retention_ms;
        p.paused = s.paused;
        p.next_gen = p.next_gen.max(s.next_gen);
        p.discarded = s.discarded;
        p.dropped_by_group_delete = s.dropped_by_group_delete;
        let keep_acked = s.keep_acked;
        let mut keep = [false; MAX_GROUPS_PER_PROJECT];
        for gs in &s.groups {
            let Some(slot) = p.groups.get_mut(gs.slot as usize) else {
                continue;
            };
            keep[gs.slot as usize] = true;
            match slot {
                Some(g) if g.gen == gs.gen => {
                    g.counters = gs.counters;
                    g.spec = gs.spec.clone();
                }
                _ => {
                    if let Ok(name) = gs.name.parse() {
                        let mut g = Group::new(name, gs.spec.clone(), gs.gen, gs.start_pseq);
                        g.counters = gs.counters;
                        *slot = Some(Box::new(g));
                    }
                }
            }
        }
        for (i, g) in p.groups.iter_mut().enumerate() {
            if !keep[i] {
                *g = None;
            }
        }
        self.by_id.insert(id, s.proj);
        self.set_keep_acked(s.proj, keep_acked, None);
        if first_naming && !keep_acked {
            // Records met before this snapshot kept what this project lets go.
            self.let_go_unowed(s.proj);
        }
    }

    /// After replay: drop what no group owns, recount, and make every owed message
    /// fresh again (leases of the previous run are gone: they are redelivered).
    pub fn finish_replay(&mut self) -> Vec<u32> {
        let mut unnamed = Vec::new();
        self.segs.values_mut().for_each(|s| {
            s.live = 0;
            s.live_bytes = 0;
        });
        for p in &mut self.projects {
            if !p.named {
                unnamed.push(p.idx);
                p.slots.clear();
                p.groups.iter_mut().for_each(|g| *g = None);
            }
            let mut valid = [(false, 0u64); MAX_GROUPS_PER_PROJECT];
            for (i, g) in p.groups.iter().enumerate() {
                if let Some(g) = g {
                    valid[i] = (true, g.start_pseq);
                }
            }
            p.chunks.clear();
            p.trace_chunks.clear();
            let mut stacked = [0u64; MAX_GROUPS_PER_PROJECT];
            let mut live = 0;
            let keep_acked = p.keep_acked;
            let (segs, chunks, traces) = (&mut self.segs, &mut p.chunks, &mut p.trace_chunks);
            p.slots.for_each_mut(|pseq, s| {
                for (gi, (ok, start)) in valid.iter().enumerate() {
                    if (s.owners | s.takers | s.dropped) & (1 << gi) != 0 && (!ok || pseq < *start)
                    {
                        s.owners &= !(1 << gi);
                        s.takers &= !(1 << gi);
                        s.dropped &= !(1 << gi);
                    }
                }
                if !keep_acked && s.owners == 0 && !s.expired() {
                    s.takers = 0;
                    s.dropped = 0;
                }
                if !s.held() {
                    return;
                }
                live += 1;
                let si = segs.entry(s.seg).or_default();
                si.live += 1;
                si.live_bytes += s.len as u64;
                let map = if s.expired() {
                    &mut *traces
                } else {
                    &mut *chunks
                };
                let e = map.entry(pseq / CHUNK).or_insert(u32::MAX);
                *e = (*e).min(s.gen_s);
                for (gi, st) in stacked.iter_mut().enumerate() {
                    if s.owners & (1 << gi) != 0 {
                        *st += 1;
                    }
                }
            });
            p.live = live;
            let base = p.base();
            let next = p.next_pseq();
            for ((gi, pseq), info) in std::mem::take(&mut p.replay_dead) {
                if let Some(Some(g)) = p.groups.get_mut(gi as usize) {
                    g.dead.insert(pseq, info);
                }
            }
            for ((gi, pseq), attempts) in std::mem::take(&mut p.replay_prior) {
                if let Some(Some(g)) = p.groups.get_mut(gi as usize) {
                    g.prior.insert(pseq, attempts);
                }
            }
            for (gi, g) in p.groups.iter_mut().enumerate() {
                let Some(g) = g else { continue };
                let slots = &p.slots;
                g.dead
                    .retain(|seq, _| slots.peek(*seq).is_some_and(|s| s.owners & (1 << gi) != 0));
                let dead = &g.dead;
                g.prior.retain(|seq, _| {
                    !dead.contains_key(seq)
                        && slots.peek(*seq).is_some_and(|s| s.owners & (1 << gi) != 0)
                });
                g.stacked = stacked[gi] - g.dead.len() as u64;
                g.cursor = g.start_pseq.max(base).min(next);
                g.oldest_hint = base;
            }
            p.pop_front();
        }
        unnamed
    }
}
