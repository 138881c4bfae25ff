//! The `Backlog` trait on the JetStream engine.

use super::*;

#[async_trait]
impl Backlog for JetStreamBacklog {
    async fn append(&self, batch: Vec<SyncMessage>) -> Result<AppendOutcome, BacklogError> {
        let inner = &self.inner;
        let mut out = AppendOutcome::default();
        let mut items = Vec::with_capacity(batch.len());
        let mut docs: HashMap<ProjectId, Option<ProjectDoc>> = HashMap::new();
        for m in &batch {
            if m.envelope.payload.len() > inner.cfg.max_message_bytes {
                return Err(BacklogError::MessageTooLarge {
                    message_id: m.envelope.message_id.clone(),
                    size: m.envelope.payload.len(),
                    max: inner.cfg.max_message_bytes,
                });
            }
            if !wire::fits_header(&m.ordering_key) || !wire::fits_header(&m.envelope.topic) {
                return Err(BacklogError::InvalidMessage {
                    message_id: m.envelope.message_id.clone(),
                    reason: "ordering key or topic has a line break or edge blanks".into(),
                });
            }
            if !docs.contains_key(&m.project_id) {
                let d = inner.doc(&m.project_id).await?;
                docs.insert(m.project_id.clone(), d);
            }
        }
        let mut counted: Vec<(ProjectId, Vec<ConsumerGroup>)> = Vec::new();
        let mut discarded: HashMap<ProjectId, u64> = HashMap::new();
        {
            let st = inner.lock();
            for m in batch {
                let p = &m.project_id;
                let takers: Vec<&ConsumerGroup> = st
                    .projects
                    .get(p)
                    .map(|ps| {
                        ps.groups
                            .iter()
                            .filter(|(_, gs)| gs.spec.filter.takes(&m))
                            .map(|(g, _)| g)
                            .collect()
                    })
                    .unwrap_or_default();
                if takers.is_empty() {
                    out.discarded_no_group += 1;
                    *discarded.entry(p.clone()).or_default() += 1;
                    continue;
                }
                let all = st.projects.get(p).map(|ps| ps.groups.len()).unwrap_or(0);
                let doc = docs.get(p).cloned().flatten().unwrap_or_default();
                let class = Class::for_retention(inner.retention_ms(&doc));
                let part = wire::partition_of(&m.ordering_key, inner.partitions);
                let h = wire::headers(&m, (takers.len() < all).then_some(&takers[..]));
                counted.push((p.clone(), takers.into_iter().cloned().collect()));
                items.push((
                    wire::subject(class, p, part),
                    h,
                    Bytes::from(wire::body(&m)),
                ));
            }
        }
        out.stored = items.len();
        inner.publish_all(items).await?;
        let mut st = inner.lock();
        for (p, n) in discarded {
            st.projects.entry(p).or_default().discarded_no_group += n;
        }
        for (p, groups) in counted {
            for g in groups {
                if let Some(gs) = st.group_mut(&p, &g) {
                    gs.counters.appended += 1;
                }
            }
        }
        Ok(out)
    }

    async fn create_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        spec: &GroupSpec,
    ) -> Result<(), BacklogError> {
        let inner = &self.inner;
        if let Some(doc) = inner.doc(project).await? {
            if !doc.groups.contains_key(group.as_str())
                && doc.groups.len() >= MAX_GROUPS_PER_PROJECT
            {
                return Err(BacklogError::TooManyGroups {
                    project: project.clone(),
                    max: MAX_GROUPS_PER_PROJECT,
                });
            }
        }
        // Consumers first: a message routed to the group must find them (DeliverPolicy New).
        inner.create_consumers(project, group).await?;
        let gd = GroupDoc::from_spec(spec);
        let (p2, g2) = (project.clone(), group.clone());
        inner
            .update_doc(project, move |d| {
                if !d.groups.contains_key(g2.as_str()) && d.groups.len() >= MAX_GROUPS_PER_PROJECT {
                    return Err(BacklogError::TooManyGroups {
                        project: p2.clone(),
                        max: MAX_GROUPS_PER_PROJECT,
                    });
                }
                let generation = d.groups.get(g2.as_str()).map_or(0, |o| o.generation);
                d.groups.insert(
                    g2.to_string(),
                    GroupDoc {
                        generation,
                        ..gd.clone()
                    },
                );
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn delete_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let doc = inner.doc(project).await?;
        if !doc.is_some_and(|d| d.groups.contains_key(group.as_str())) {
            return Err(BacklogError::UnknownGroup {
                project: project.clone(),
                group: group.clone(),
            });
        }
        let (pending, ack_pending) = inner.consumer_figures(project, group).await;
        let owned: Vec<(u16, u64)> = {
            let st = inner.lock();
            st.projects
                .get(project)
                .and_then(|ps| ps.groups.get(group))
                .map(|gs| gs.owned.iter().map(|(p, o)| (*p, o.revision)).collect())
                .unwrap_or_default()
        };
        let g2 = group.clone();
        inner
            .update_doc(project, move |d| {
                d.groups.remove(g2.as_str());
                Ok(())
            })
            .await?;
        if let Some(ps) = inner.lock().projects.get_mut(project) {
            ps.dropped_by_group_delete += pending + ack_pending;
        }
        for class in Class::ALL {
            if let Some(s) = inner.streams.get(&class) {
                for part in 0..inner.partitions {
                    let _ = s
                        .delete_consumer(&wire::consumer_name(project, group, class, part))
                        .await;
                }
            }
        }
        for (part, rev) in owned {
            let _ = inner
                .owners
                .delete_expect_revision(wire::owner_key(project, group, part), Some(rev))
                .await;
        }
        let _ = inner
            .owners
            .delete(wire::member_key(project, group, &inner.node))
            .await;
        Ok(())
    }

    async fn groups(&self, project: &ProjectId) -> Result<Vec<GroupInfo>, BacklogError> {
        // A project nobody declared a group of has none (as in the embedded engine).
        let doc = self.inner.doc(project).await?.unwrap_or_default();
        Ok(doc
            .groups
            .iter()
            .filter_map(|(n, gd)| {
                Some(GroupInfo {
                    name: n.parse().ok()?,
                    spec: gd.spec()?,
                })
            })
            .collect())
    }

    async fn set_retention(
        &self,
        project: &ProjectId,
        retention: Duration,
    ) -> Result<(), BacklogError> {
        let ms = retention.as_millis().min(i64::MAX as u128) as i64;
        self.inner
            .update_doc(project, move |d| {
                d.retention_ms = Some(ms);
                Ok(())
            })
            .await?;
        // At once for what this node holds (the carry-over of a switch); what it has
        // not pulled yet is expired when pulled.
        self.inner.expire_held(project).await
    }

    async fn set_paused(&self, project: &ProjectId, paused: bool) -> Result<(), BacklogError> {
        self.inner
            .update_doc(project, move |d| {
                d.paused = paused;
                Ok(())
            })
            .await?;
        let mut st = self.inner.lock();
        let groups: Vec<ConsumerGroup> = st
            .projects
            .get(project)
            .map(|ps| ps.groups.keys().cloned().collect())
            .unwrap_or_default();
        for g in groups {
            st.signal(project, &g);
        }
        Ok(())
    }

    async fn lease(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        consumer: ConsumerId,
        max: usize,
    ) -> Result<Vec<Delivery>, BacklogError> {
        let inner = &self.inner;
        let unknown = || BacklogError::UnknownGroup {
            project: project.clone(),
            group: group.clone(),
        };
        let doc = inner.doc(project).await?.ok_or_else(unknown)?;
        if !doc.groups.contains_key(group.as_str()) {
            return Err(unknown());
        }
        let now = inner.clock.now_ms();
        let deadline = now + inner.cfg.ack_timeout.as_millis() as i64;
        let mut st = inner.lock();
        let st = &mut *st;
        let Some(gs) = st
            .projects
            .get_mut(project)
            .and_then(|ps| ps.groups.get_mut(group))
        else {
            return Err(unknown());
        };
        if gs.consumers.insert(consumer) {
            st.consumers
                .entry(consumer)
                .or_default()
                .insert((project.clone(), group.clone()));
            if !gs.member {
                inner.wake_owners.notify_one();
            }
        }
        if doc.paused || max == 0 {
            return Ok(Vec::new());
        }
        let closed = gs.closed_parts();
        let next_gen = &mut st.next_gen;
        let leased = gs.local.lease(consumer, max, &closed, now, deadline, || {
            *next_gen = next_gen.wrapping_add(1);
            *next_gen
        });
        let mut out = Vec::with_capacity(leased.len());
        for l in leased {
            if l.held.attempt > 1 {
                gs.counters.redelivered += 1;
            }
            out.push(Delivery {
                message: l.held.message,
                attempt: l.held.attempt,
                token: LeaseToken {
                    proj: 0,
                    group: 0,
                    gen: l.gen,
                    seq: l.held.sseq,
                },
                ack_deadline_ms: deadline,
            });
        }
        for d in &out {
            st.leases
                .insert(d.token.gen, (project.clone(), group.clone()));
        }
        if !out.is_empty() {
            inner.room.notify_waiters();
        }
        Ok(out)
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let h = {
            let mut st = inner.lock();
            let (p, g) = st.settle(token)?;
            if let Some(gs) = st.group_mut(&p, &g) {
                gs.counters.acked += 1;
            }
            st.signal(&p, &g);
            st.settled.take()
        };
        match h {
            Some(h) => inner.send(&h.reply, Bytes::from_static(b"+ACK")).await,
            None => Err(BacklogError::UnknownLease { seq: token.seq }),
        }
    }

    async fn nack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let unknown = BacklogError::UnknownLease { seq: token.seq };
        let buried = {
            let mut st = inner.lock();
            let (p, g) = st.leases.get(&token.gen).cloned().ok_or(unknown)?;
            let Some(gs) = st.group_mut(&p, &g) else {
                return Err(BacklogError::UnknownLease { seq: token.seq });
            };
            let Some(attempt) = gs.local.attempt_of(token.gen) else {
                return Err(BacklogError::UnknownLease { seq: token.seq });
            };
            gs.counters.nacked += 1;
            let spec = gs.spec.clone();
            let how = inner.failed(&mut st, &spec, attempt);
            st.leases.remove(&token.gen);
            let now = inner.clock.now_ms();
            let gs = st.group_mut(&p, &g);
            let buried = match (how, gs) {
                (Failed::Retry(ms), Some(gs)) => {
                    gs.local.retry_later(token.gen, now + ms, false);
                    None
                }
                (Failed::DeadLetter, Some(gs)) => gs
                    .local
                    .settle(token.gen)
                    .map(|(h, _)| (p.clone(), g.clone(), h)),
                (_, None) => None,
            };
            st.signal(&p, &g);
            buried
        };
        match buried {
            Some((p, g, h)) => inner.bury(&p, &g, h).await,
            None => Ok(()),
        }
    }

    async fn reject(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let (p, g, h) = {
            let mut st = inner.lock();
            let (p, g) = st.settle(token)?;
            st.signal(&p, &g);
            let h = st.settled.take();
            (p, g, h)
        };
        match h {
            Some(h) => inner.bury(&p, &g, h).await,
            None => Err(BacklogError::UnknownLease { seq: token.seq }),
        }
    }

    async fn consumer_gone(&self, consumer: ConsumerId) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        let groups = st.consumers.remove(&consumer).unwrap_or_default();
        let mut n = 0;
        for (p, g) in groups {
            let gens = match st.group_mut(&p, &g) {
                Some(gs) => {
                    gs.consumers.remove(&consumer);
                    if gs.consumers.is_empty() {
                        inner.wake_owners.notify_one();
                    }
                    gs.local.requeue_consumer(consumer)
                }
                None => Vec::new(),
            };
            n += gens.len();
            for gen in gens {
                st.leases.remove(&gen);
            }
            st.signal(&p, &g);
        }
        Ok(n)
    }

    async fn tick(&self) -> Result<TickReport, BacklogError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let touch_before = now - (inner.cfg.ack_timeout.as_millis() as i64 / 3).max(1);
        let mut buried = Vec::new();
        let mut touch = Vec::new();
        let mut acks = Vec::new();
        let mut timed_out = 0u64;
        let mut expired = 0u64;
        {
            let mut st = inner.lock();
            let st = &mut *st;
            let keys: Vec<(ProjectId, ConsumerGroup, i64)> = st
                .projects
                .iter()
                .flat_map(|(p, ps)| {
                    let r = self.inner.retention_ms(&ps.doc);
                    ps.groups.keys().map(move |g| (p.clone(), g.clone(), r))
                })
                .collect();
            for (p, g, retention) in keys {
                let Some(gs) = st.group_mut(&p, &g) else {
                    continue;
                };
                let (gone, replies) = gs.local.take_expired(now - retention);
                gs.counters.expired += replies.len() as u64;
                expired += replies.len() as u64;
                acks.extend(replies);
                let timed = gs.local.timed_out(now);
                gs.counters.timed_out += timed.len() as u64;
                timed_out += timed.len() as u64;
                let spec = gs.spec.clone();
                for gen in gone {
                    st.leases.remove(&gen);
                }

                for (gen, attempt) in timed {
                    let how = inner.failed(st, &spec, attempt);
                    let Some(gs) = st.group_mut(&p, &g) else {
                        break;
                    };
                    match how {
                        Failed::Retry(ms) => {
                            gs.local.retry_later(gen, now + ms, true);
                        }
                        Failed::DeadLetter => {
                            if let Some((h, _)) = gs.local.settle(gen) {
                                buried.push((p.clone(), g.clone(), h));
                            }
                            st.leases.remove(&gen);
                        }
                    }
                }
                let Some(gs) = st.group_mut(&p, &g) else {
                    continue;
                };
                touch.extend(gs.local.touch_stale(touch_before, now));
                if gs.local.has_due(now) {
                    st.signal(&p, &g);
                }
            }
        }
        for (p, g, h) in buried {
            inner.bury(&p, &g, h).await?;
        }
        for reply in acks {
            inner.send(&reply, Bytes::from_static(b"+ACK")).await?;
        }
        for reply in touch {
            inner.send(&reply, Bytes::from_static(b"+WPI")).await?;
        }
        Ok(TickReport {
            timed_out,
            expired: expired + inner.expired_since_tick.swap(0, Ordering::Relaxed),
        })
    }

    async fn dead_letters(
        &self,
        project: &ProjectId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let from = after_seq.map(|s| s.saturating_add(1)).unwrap_or(1);
        Ok(self
            .inner
            .dead_from(project, from, limit)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    async fn retry_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let found = inner.dead_found(project, message_id).await?;
        let doc = inner.doc(project).await?.unwrap_or_default();
        let class = Class::for_retention(inner.retention_ms(&doc));
        for d in &found {
            let part = wire::partition_of(&d.message.ordering_key, inner.partitions);
            let mut h = wire::headers(&d.message, Some(&[&d.group]));
            h.insert(
                wire::H_MSG_ID,
                format!("{message_id}.retry.{}", d.seq).as_str(),
            );
            inner
                .publish_all(vec![(
                    wire::subject(class, project, part),
                    h,
                    Bytes::from(wire::body(&d.message)),
                )])
                .await?;
            inner
                .dead
                .delete_message(d.seq)
                .await
                .map_err(|e| nats_err("delete dead letter", e))?;
        }
        Ok(found.len())
    }

    async fn drop_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let found = inner.dead_found(project, message_id).await?;
        for d in &found {
            inner
                .dead
                .delete_message(d.seq)
                .await
                .map_err(|e| nats_err("delete dead letter", e))?;
        }
        Ok(found.len())
    }

    async fn set_keep_acknowledged(
        &self,
        _project: &ProjectId,
        keep: bool,
    ) -> Result<(), BacklogError> {
        // Limits retention keeps acknowledged messages until MaxAge: always on here.
        if keep {
            Ok(())
        } else {
            Err(BacklogError::Unsupported {
                op: "set_keep_acknowledged(false)",
            })
        }
    }

    async fn seek(
        &self,
        _project: &ProjectId,
        _group: &ConsumerGroup,
        _from_ms: i64,
    ) -> Result<SeekOutcome, BacklogError> {
        Err(BacklogError::Unsupported { op: "seek" })
    }

    async fn purge(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<SeekOutcome, BacklogError> {
        let inner = &self.inner;
        let doc = inner.doc(project).await?;
        if !doc.is_some_and(|d| d.groups.contains_key(group.as_str())) {
            return Err(BacklogError::UnknownGroup {
                project: project.clone(),
                group: group.clone(),
            });
        }
        let _ = inner.client.flush().await;
        let (pending, ack_pending) = inner.consumer_figures(project, group).await;
        // Everything stored up to now is dropped for the group; appends from here on
        // (also those racing this call) are owed: the new consumers start after the
        // streams' last sequences read before the old ones go.
        let mut last = HashMap::new();
        for class in Class::ALL {
            if let Some(s) = inner.streams.get(&class) {
                let info = s.get_info().await.map_err(|e| nats_err("purge", e))?;
                last.insert(class, info.state.last_sequence);
            }
        }
        inner.make_consumers(project, group, Some(&last)).await?;
        let in_flight = {
            let st = inner.lock();
            st.projects
                .get(project)
                .and_then(|ps| ps.groups.get(group))
                .map(|gs| gs.local.in_flight() as u64)
                .unwrap_or(0)
        };
        let g2 = group.clone();
        inner
            .update_doc(project, move |d| {
                if let Some(gd) = d.groups.get_mut(g2.as_str()) {
                    gd.generation += 1;
                }
                Ok(())
            })
            .await?;
        let dropped = pending + ack_pending;
        if let Some(gs) = inner.lock().group_mut(project, group) {
            gs.counters.dropped += dropped;
        }
        let (owed_pending, owed_ack) = inner.consumer_figures(project, group).await;
        Ok(SeekOutcome {
            from_ms: None,
            replayed: 0,
            dropped,
            in_flight,
            owed: owed_pending + owed_ack,
        })
    }

    async fn find_message(
        &self,
        _project: &ProjectId,
        _message_id: &MessageId,
    ) -> Result<Option<MessageTrace>, BacklogError> {
        Err(BacklogError::Unsupported { op: "find_message" })
    }

    async fn device_messages(
        &self,
        _project: &ProjectId,
        _query: &MessageQuery,
    ) -> Result<Vec<MessageTrace>, BacklogError> {
        Err(BacklogError::Unsupported {
            op: "device_messages",
        })
    }

    async fn stats(&self, project: &ProjectId) -> Result<ProjectStats, BacklogError> {
        let inner = &self.inner;
        let doc = inner
            .doc(project)
            .await?
            .ok_or_else(|| BacklogError::UnknownProject {
                project: project.clone(),
            })?;
        // Settlements are published without waiting: let them reach the server first.
        let _ = inner.client.flush().await;
        let mut dead_counts: HashMap<String, u64> = HashMap::new();
        if let Ok(mut subjects) = inner
            .dead
            .info_with_subjects(wire::dead_subjects_of(project))
            .await
        {
            while let Some(Ok((s, n))) = subjects.next().await {
                dead_counts.insert(s, n as u64);
            }
        }
        let mut stored = 0u64;
        for class in Class::ALL {
            if let Some(s) = inner.streams.get(&class) {
                let filter = format!("iotsync.{}.{project}.*", class.token());
                if let Ok(mut subjects) = s.info_with_subjects(filter).await {
                    while let Some(Ok((_, n))) = subjects.next().await {
                        stored += n as u64;
                    }
                }
            }
        }
        // This node's live figures plus what the other nodes published (≤ 1 s old).
        let peers = inner.peer_figures(project).await;
        let own = inner.own_figures().remove(project).unwrap_or_default();
        let mut groups = Vec::new();
        for name in doc.groups.keys() {
            let Ok(g) = name.parse::<ConsumerGroup>() else {
                continue;
            };
            let (pending, ack_pending) = inner.consumer_figures(project, &g).await;
            let mut f = own.groups.get(name).cloned().unwrap_or_default();
            for p in &peers {
                if let Some(o) = p.groups.get(name) {
                    f.add(o);
                }
            }
            let now = inner.clock.now_ms();
            groups.push(GroupStats {
                group: g.to_string(),
                stacked: pending + ack_pending,
                oldest_stacked_age_ms: f.oldest_generate_time.map(|t| now - t),
                in_flight: f.in_flight,
                retry_waiting: f.retry_waiting,
                dead_letters: dead_counts
                    .get(&wire::dead_subject(project, &g))
                    .copied()
                    .unwrap_or(0),
                consumers: f.consumers,
                appended_total: f.appended,
                acked_total: f.acked,
                redelivered_total: f.redelivered,
                expired_total: f.expired,
                rejected_total: f.rejected,
                nacked_total: f.nacked,
                timed_out_total: f.timed_out,
                unreadable_total: 0,
                dropped_total: f.dropped,
                replayed_total: 0,
            });
        }
        let sum = |pick: fn(&figures::NodeFigures) -> u64| {
            pick(&own) + peers.iter().map(pick).sum::<u64>()
        };
        Ok(ProjectStats {
            project: project.to_string(),
            paused: doc.paused,
            retention_ms: inner.retention_ms(&doc),
            stored_messages: stored,
            discarded_no_group: sum(|f| f.discarded_no_group),
            dropped_by_group_delete: sum(|f| f.dropped_by_group_delete),
            keep_acknowledged: true,
            groups,
        })
    }

    fn watch(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<AvailabilityWatch, BacklogError> {
        let mut st = self.inner.lock();
        let tx = st
            .watches
            .entry((project.clone(), group.clone()))
            .or_insert_with(|| watch::channel(0).0);
        let rx = tx.subscribe();
        // A watcher is a consumer to be: the node takes partitions of the group.
        self.inner.wake_owners.notify_one();
        Ok(AvailabilityWatch::from_receiver(rx))
    }
}
