//! Dead letters: a copy in `IOTSYNC_DEAD` before `+TERM`; listing by sequence.

use super::*;

impl Inner {
    /// Copies a delivery to the dead-letter stream (waits for its PubAck), then `+TERM`.
    pub(super) async fn dead_letter(
        &self,
        group: &ConsumerGroup,
        f: &Held,
    ) -> Result<(), BacklogError> {
        let m = &f.message;
        let mut h = wire::headers(m, None);
        h.insert(
            wire::H_MSG_ID,
            format!("{}.{}.dead", m.envelope.message_id, f.sseq).as_str(),
        );
        h.insert(wire::H_DEAD_GROUP, group.as_str());
        h.insert(wire::H_DEAD_ATTEMPTS, f.attempt.to_string().as_str());
        h.insert(wire::H_DEAD_AT, self.clock.now_ms().to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(
                wire::dead_subject(&m.project_id, group),
                h,
                Bytes::from(wire::body(m)),
            )
            .await
            .map_err(|e| nats_err("dead letter", e))?;
        if let Err(e) = ack.await {
            // Not copied: let it come back rather than lose it.
            self.send(&f.reply, nak_payload(0)).await?;
            return Err(nats_err("dead letter", e));
        }
        self.send(&f.reply, Bytes::from_static(b"+TERM")).await
    }

    /// Dead-letters a delivery settled here and counts it.
    pub(super) async fn bury(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
        h: Held,
    ) -> Result<(), BacklogError> {
        self.dead_letter(g, &h).await?;
        if let Some(gs) = self.lock().group_mut(p, g) {
            gs.counters.rejected += 1;
        }
        Ok(())
    }

    /// Dead letters of a project from `from_seq` on (by the dead stream's sequence).
    pub(super) async fn dead_from(
        &self,
        p: &ProjectId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, async_nats::HeaderMap)>, BacklogError> {
        let mut out = Vec::new();
        let mut seq = from_seq.max(1);
        while out.len() < limit {
            let m = self
                .dead
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(wire::dead_subjects_of(p))
                .send()
                .await;
            let m = match m {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(nats_err("read dead letters", e)),
            };
            seq = m.sequence + 1;
            let Ok(message) = wire::decode(&m.payload) else {
                continue;
            };
            let Some(group) = wire::header_str(Some(&m.headers), wire::H_DEAD_GROUP)
                .and_then(|g| g.parse::<ConsumerGroup>().ok())
            else {
                continue;
            };
            out.push((
                DeadLetter {
                    group,
                    message,
                    attempts: wire::header_i64(Some(&m.headers), wire::H_DEAD_ATTEMPTS).unwrap_or(0)
                        as u32,
                    dead_at_ms: wire::header_i64(Some(&m.headers), wire::H_DEAD_AT).unwrap_or(0),
                    seq: m.sequence,
                },
                m.headers,
            ));
        }
        Ok(out)
    }

    /// The dead letters of `id` (one per group that rejected it), or `DeadLetterNotFound`.
    pub(super) async fn dead_found(
        &self,
        p: &ProjectId,
        id: &MessageId,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let found = self.dead_matching(p, id).await?;
        if found.is_empty() {
            return Err(BacklogError::DeadLetterNotFound {
                project: p.clone(),
                message_id: id.clone(),
            });
        }
        Ok(found)
    }

    pub(super) async fn dead_matching(
        &self,
        p: &ProjectId,
        id: &MessageId,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = self.dead_from(p, from, 256).await?;
            let Some(last) = page.last().map(|(d, _)| d.seq) else {
                break;
            };
            from = last + 1;
            out.extend(
                page.into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| &d.message.envelope.message_id == id),
            );
        }
        Ok(out)
    }
}
