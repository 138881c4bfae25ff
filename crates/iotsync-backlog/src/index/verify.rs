//! The index's invariants, checked by tests (and callable for debugging).

use super::Index;

impl Index {
    /// Checks the invariants listed at the top of this module (tests and debugging).
    pub fn verify(&self) -> Result<(), String> {
        fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(what())
            }
        }
        for p in &self.projects {
            let mut live = 0u64;
            p.slots.for_each(|_, s| live += s.held() as u64);
            check(live == p.live, || {
                format!("project {}: live {} != counted {live}", p.id, p.live)
            })?;
            for (gi, g) in p.groups.iter().enumerate() {
                let Some(g) = g else { continue };
                let mut owed_not_dead = 0;
                let mut all = Vec::new();
                p.slots.for_each(|pseq, s| all.push((pseq, *s)));
                for (pseq, s) in all {
                    if s.owners & (1 << gi) == 0 {
                        continue;
                    }
                    let dead = g.dead.contains_key(&pseq);
                    if !dead {
                        owed_not_dead += 1;
                    }
                    if pseq < g.cursor {
                        let places = g.in_flight.contains_key(&pseq) as u32
                            + g.retry_due.contains_key(&pseq) as u32
                            + dead as u32
                            + g.keys.get(&s.key).is_some_and(|h| h.parked.contains(&pseq)) as u32;
                        check(places == 1, || {
                            format!(
                                "{}: seq {pseq} of group {} is in {places} places",
                                p.id, g.name
                            )
                        })?;
                    }
                }
                check(owed_not_dead == g.stacked, || {
                    format!(
                        "{}: group {} stacked {} != counted {owed_not_dead}",
                        p.id, g.name, g.stacked
                    )
                })?;
                check(g.retry.len() == g.retry_due.len(), || {
                    "retry index out of step".into()
                })?;
                let parked: usize = g.keys.values().map(|h| h.parked.len()).sum();
                check(parked == g.parked, || "parked count out of step".into())?;
                // Every key hold counts exactly the messages holding it, and exists only
                // while one does.
                let mut holders: std::collections::HashMap<u32, u32> = Default::default();
                let key_of = |pseq: u64| p.slots.peek(pseq).map(|s| s.key);
                for (pseq, l) in &g.in_flight {
                    if l.holds_key {
                        *holders
                            .entry(key_of(*pseq).unwrap_or(u32::MAX))
                            .or_default() += 1;
                    }
                }
                for ((_, pseq), w) in &g.retry {
                    if w.holds_key {
                        *holders
                            .entry(key_of(*pseq).unwrap_or(u32::MAX))
                            .or_default() += 1;
                    }
                }
                for (k, h) in &g.keys {
                    check(h.active > 0 && holders.get(k) == Some(&h.active), || {
                        format!(
                            "{}: group {}: key {k} holds {} but {:?} messages hold it",
                            p.id,
                            g.name,
                            h.active,
                            holders.get(k)
                        )
                    })?;
                }
                check(holders.len() == g.keys.len(), || {
                    format!(
                        "{}: group {}: {} keys held by messages, {} holds",
                        p.id,
                        g.name,
                        holders.len(),
                        g.keys.len()
                    )
                })?;
            }
        }
        Ok(())
    }
}
