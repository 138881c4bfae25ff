//! Pulling a partition's consumers into the owner's buffer; the group's consumers.

use super::*;

impl Inner {
    /// Messages pulled by a partition task, all at hand: buffered under one lock; what
    /// this group does not take, or what is past retention, is acked at once.
    pub(super) async fn pulled(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
        class: Class,
        part: u16,
        generation: u64,
        ms: Vec<jetstream::Message>,
    ) {
        let now = self.clock.now_ms();
        let mut settle: Vec<(async_nats::Subject, &'static [u8])> = Vec::new();
        let mut decoded = Vec::with_capacity(ms.len());
        for m in ms {
            let (sseq, delivered) = match m.info() {
                Ok(i) => (i.stream_sequence, i.delivered),
                Err(_) => continue,
            };
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            match wire::decode(&m.payload) {
                Ok(msg) if wire::for_group(m.headers.as_ref(), g) => {
                    decoded.push((sseq, delivered, reply, msg));
                }
                Ok(_) => settle.push((reply, b"+ACK")),
                Err(e) => {
                    tracing::warn!(stream = class.stream(), seq = sseq, error = %e, "not an iotsync message: terminated");
                    settle.push((reply, b"+TERM"));
                }
            }
        }
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(ps) = st.projects.get_mut(p) else {
                return;
            };
            let retention = self.retention_ms(&ps.doc);
            let Some(gs) = ps.groups.get_mut(g) else {
                return;
            };
            if gs.generation != generation {
                // Pulled by a request made before a purge: from the old consumer (not
                // owed any more; the nak goes nowhere) or from the new one (the nak
                // hands it back at once).
                for (_, _, reply, _) in decoded {
                    settle.push((reply, b"-NAK"));
                }
                decoded = Vec::new();
            }
            let mut pushed = false;
            for (sseq, delivered, reply, msg) in decoded {
                if !gs.spec.filter.takes(&msg) {
                    settle.push((reply, b"+ACK"));
                } else if now - msg.envelope.generate_time >= retention {
                    gs.counters.expired += 1;
                    self.expired_since_tick.fetch_add(1, Ordering::Relaxed);
                    settle.push((reply, b"+ACK"));
                } else {
                    let high = gs.pulled_up_to.entry((class, part)).or_insert(0);
                    let again = sseq <= *high;
                    *high = (*high).max(sseq);
                    let attempt = if again {
                        (delivered.max(1) as u32).max(2)
                    } else {
                        delivered.max(1) as u32
                    };
                    pushed |= gs.local.push(Held {
                        class,
                        part,
                        sseq,
                        reply,
                        message: msg,
                        attempt,
                        touched_ms: now,
                    });
                }
            }
            if pushed {
                st.signal(p, g);
            }
        }
        for (reply, body) in settle {
            let _ = self.send(&reply, Bytes::from_static(body)).await;
        }
    }

    /// Pulls one (group, class, partition) into the local buffer until stopped.
    pub(super) async fn pull_loop(
        self: Arc<Self>,
        p: ProjectId,
        g: ConsumerGroup,
        class: Class,
        part: u16,
        stop: Arc<AtomicBool>,
    ) {
        let Some(s) = self.streams.get(&class) else {
            return;
        };
        let name = wire::consumer_name(&p, &g, class, part);
        let consumer = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.get_consumer::<pull::Config>(&name).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(consumer = %name, error = %e, "pull consumer not there yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let cap = self.cfg.buffer_per_partition.max(1);
        while !stop.load(Ordering::Relaxed) {
            let woken = self.room.notified();
            let room = {
                let st = self.lock();
                match st.projects.get(&p) {
                    Some(ps) if !ps.doc.paused => ps.groups.get(&g).map(|gs| {
                        (
                            cap.saturating_sub(gs.local.buffered(class, part)),
                            gs.generation,
                        )
                    }),
                    Some(ps) => ps.groups.get(&g).map(|gs| (0, gs.generation)),
                    None => None,
                }
            };
            let Some((room, generation)) = room else {
                return;
            };
            if room < cap / 4 {
                // Pull in chunks, not a message at a time; leases wake us.
                let _ = tokio::time::timeout(Duration::from_millis(20), woken).await;
                continue;
            }
            let batch = consumer
                .batch()
                .max_messages(room)
                .expires(self.cfg.pull_expires)
                .messages()
                .await;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(consumer = %name, error = %e, "pull failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut chunks = batch.ready_chunks(cap);
            'batch: while let Some(chunk) = chunks.next().await {
                let mut ms = Vec::with_capacity(chunk.len());
                let mut ended = false;
                for m in chunk {
                    match m {
                        Ok(m) => ms.push(m),
                        Err(e) => {
                            tracing::debug!(consumer = %name, error = %e, "pull batch ended");
                            ended = true;
                        }
                    }
                }
                self.pulled(&p, &g, class, part, generation, ms).await;
                if ended {
                    break 'batch;
                }
            }
        }
    }

    pub(super) fn spawn_pulls(
        self: &Arc<Self>,
        p: &ProjectId,
        g: &ConsumerGroup,
        part: u16,
        stop: &Arc<AtomicBool>,
    ) -> Vec<JoinHandle<()>> {
        Class::ALL
            .iter()
            .map(|class| {
                let inner = self.clone();
                let (p, g, stop, class) = (p.clone(), g.clone(), stop.clone(), *class);
                tokio::spawn(async move { inner.pull_loop(p, g, class, part, stop).await })
            })
            .collect()
    }

    pub(super) async fn create_consumers(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
    ) -> Result<(), BacklogError> {
        self.make_consumers(p, g, None).await
    }

    /// The group's consumers; `from`: made anew (a purge), starting after the given last
    /// sequence of each class's stream.
    pub(super) async fn make_consumers(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
        from: Option<&HashMap<Class, u64>>,
    ) -> Result<(), BacklogError> {
        for class in Class::ALL {
            let Some(s) = self.streams.get(&class) else {
                continue;
            };
            for part in 0..self.partitions {
                let name = wire::consumer_name(p, g, class, part);
                let deliver_policy = match from {
                    None => jetstream::consumer::DeliverPolicy::New,
                    Some(last) => {
                        let _ = s.delete_consumer(&name).await;
                        jetstream::consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: last.get(&class).copied().unwrap_or(0) + 1,
                        }
                    }
                };
                s.get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: wire::subject(class, p, part),
                        deliver_policy,
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: self.cfg.ack_timeout,
                        max_deliver: -1,
                        max_ack_pending: (self.cfg.buffer_per_partition as i64 * 4).max(1024),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| nats_err("create consumer", e))?;
            }
        }
        Ok(())
    }

    /// Sum over the group's consumers: (num_pending, num_ack_pending).
    pub(super) async fn consumer_figures(&self, p: &ProjectId, g: &ConsumerGroup) -> (u64, u64) {
        let (mut pending, mut ack_pending) = (0, 0);
        for class in Class::ALL {
            let Some(s) = self.streams.get(&class) else {
                continue;
            };
            for part in 0..self.partitions {
                if let Ok(i) = s
                    .consumer_info(wire::consumer_name(p, g, class, part))
                    .await
                {
                    pending += i.num_pending;
                    ack_pending += i.num_ack_pending as u64;
                }
            }
        }
        (pending, ack_pending)
    }
}
