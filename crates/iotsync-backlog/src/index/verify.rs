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
            p.slots.for_each(|_, s| live += (s.owners != 0) as u64);
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
                            + g.keys.get(&s.key).is_some_and(|q| q.contains(&pseq)) as u32;
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
                let parked: usize = g.keys.values().map(|q| q.len()).sum();
                check(parked == g.parked, || "parked count out of step".into())?;
                let holders = g.in_flight.values().filter(|l| l.holds_key).count()
                    + g.retry.values().filter(|w| w.holds_key).count();
                check(holders == g.keys.len(), || {
                    format!(
                        "{}: group {}: {holders} key holders for {} held keys",
                        p.id,
                        g.name,
                        g.keys.len()
                    )
                })?;
            }
        }
        Ok(())
    }
}
