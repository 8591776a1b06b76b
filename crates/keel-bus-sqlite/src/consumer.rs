//! Consumer groups on the bus file. Each subscription is a *member* of its group: it
//! heartbeats in `bus_members`; the live members, sorted by id, split the partitions
//! (`p % n == index`); a member claims a partition in `bus_owners` with a lease it renews,
//! so two members never consume one partition. A dead member's leases run out and the
//! others take its partitions over, continuing from the committed offsets in `bus_offsets`.
//!
//! Within a partition messages are handled one at a time in order. A failure records the
//! attempt count and the time of the next try in the offset row (so a restart keeps the
//! backoff), and holds the partition until the message succeeds or is dead-lettered; the
//! dead-letter copy and the offset move commit in one transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use keel_messaging::{
    AfterFailure, BusError, Consumer, Delivery, Handler, HandlerError, Message, Subscription,
    handle_catching_panics, headers, new_id,
};
use keel_store::now_ms;
use sqlx::Row;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{SqliteBus, unavailable};

pub(crate) async fn start(
    bus: SqliteBus,
    sub: Subscription,
    handler: Arc<dyn Handler>,
) -> Result<Consumer, BusError> {
    let member: Arc<str> = Arc::from(new_id().as_str());
    let sub = Arc::new(sub);
    let (saves, queued) = mpsc::unbounded_channel();
    tokio::spawn(
        Saver {
            bus: bus.clone(),
            sub: sub.clone(),
            member: member.clone(),
        }
        .run(queued),
    );
    let m = Member {
        bus,
        sub,
        handler,
        member,
        saves,
    };
    m.heartbeat().await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(m.run(stop.clone()));
    Ok(Consumer::new(stop, task))
}

/// The lag gauge (a COUNT over the group's unread messages) is refreshed every this many
/// ticks of 500 ms.
const LAG_EVERY_TICKS: u64 = 10;

#[derive(Clone)]
struct Member {
    bus: SqliteBus,
    sub: Arc<Subscription>,
    handler: Arc<dyn Handler>,
    member: Arc<str>,
    /// Positions to save go to the member's [`Saver`].
    saves: mpsc::UnboundedSender<SaveRequest>,
}

struct Worker {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Member {
    fn lease_ms(&self) -> i64 {
        self.bus.settings.member_timeout.as_millis() as i64
    }

    async fn heartbeat(&self) -> Result<(), BusError> {
        self.bus.store.write(sqlx::query(
            "INSERT INTO bus_members (destination, grp, member, heartbeat_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (destination, grp, member) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(&*self.member)
        .bind(now_ms())
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// The partitions this member should own now.
    async fn assignment(&self) -> Result<Vec<u32>, BusError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT member FROM bus_members WHERE destination = $1 AND grp = $2 AND heartbeat_at >= $3 ORDER BY member",
        )
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(now_ms() - self.lease_ms())
        .fetch_all(self.bus.store.pool())
        .await
        .map_err(|e| unavailable(e.into()))?;
        let n = rows.len().max(1) as u32;
        let Some(index) = rows.iter().position(|(m,)| *m == *self.member) else {
            return Ok(Vec::new());
        };
        Ok((0..self.bus.settings.partitions)
            .filter(|p| p % n == index as u32)
            .collect())
    }

    /// Claims or renews ownership of each of `partitions`, in one transaction; returns those
    /// now held (another live member may still hold some).
    async fn claim(&self, partitions: &[u32]) -> Result<Vec<u32>, BusError> {
        let now = now_ms();
        let mut tx = self.bus.store.begin().await.map_err(unavailable)?;
        let mut held = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let affected = sqlx::query(
                "INSERT INTO bus_owners (destination, grp, partition, member, lease_until) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (destination, grp, partition) DO UPDATE SET member = excluded.member, lease_until = excluded.lease_until \
                 WHERE bus_owners.member = excluded.member OR bus_owners.lease_until < $6",
            )
            .bind(&self.sub.destination)
            .bind(&self.sub.group)
            .bind(i64::from(partition))
            .bind(&*self.member)
            .bind(now + self.lease_ms())
            .bind(now)
            .execute(tx.conn())
            .await
            .map_err(|e| unavailable(e.into()))?
            .rows_affected();
            if affected == 1 {
                held.push(partition);
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(held)
    }

    async fn release(&self, partition: u32) {
        let _ = self.bus.store.write(sqlx::query(
            "DELETE FROM bus_owners WHERE destination = $1 AND grp = $2 AND partition = $3 AND member = $4",
        )
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(i64::from(partition))
        .bind(&*self.member)
        )
        .await;
    }

    async fn run(self, stop: CancellationToken) {
        let mut workers: HashMap<u32, Worker> = HashMap::new();
        let mut ticks: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.heartbeat().await.is_err() {
                continue; // bus file busy or gone for a moment; leases outlive a few misses
            }
            let Ok(assigned) = self.assignment().await else {
                continue;
            };
            // Give up partitions no longer ours, after their in-flight message.
            let gone: Vec<u32> = workers
                .keys()
                .copied()
                .filter(|p| !assigned.contains(p))
                .collect();
            for p in gone {
                if let Some(w) = workers.remove(&p) {
                    w.stop.cancel();
                    let _ = w.task.await;
                    self.release(p).await;
                }
            }
            // Workers that stopped on their own (lost their lease).
            workers.retain(|_, w| !w.task.is_finished());
            // One write for all leases (the bus file is shared by every process: per-partition
            // writes every tick would keep its writers queued).
            for p in self.claim(&assigned).await.unwrap_or_default() {
                if let std::collections::hash_map::Entry::Vacant(e) = workers.entry(p) {
                    let ws = stop.child_token();
                    let task = tokio::spawn(self.clone().partition(p, ws.clone()));
                    e.insert(Worker { stop: ws, task });
                }
            }
            ticks += 1;
            if ticks % LAG_EVERY_TICKS == 1 {
                self.report_lag(&workers).await;
            }
        }
        // Graceful stop: let each partition finish its message, then hand everything back.
        for (p, w) in workers.drain() {
            w.stop.cancel();
            let _ = w.task.await;
            self.release(p).await;
        }
        let _ = self
            .bus
            .store
            .write(
                sqlx::query(
                    "DELETE FROM bus_members WHERE destination = $1 AND grp = $2 AND member = $3",
                )
                .bind(&self.sub.destination)
                .bind(&self.sub.group)
                .bind(&*self.member),
            )
            .await;
    }

    async fn report_lag(&self, workers: &HashMap<u32, Worker>) {
        if workers.is_empty() {
            return;
        }
        let lag: Result<(i64,), _> = sqlx::query_as(
            "SELECT COUNT(*) FROM bus_messages m JOIN bus_offsets o \
               ON o.destination = m.destination AND o.partition = m.partition AND o.grp = $1 \
             JOIN bus_owners w ON w.destination = m.destination AND w.grp = $2 AND w.partition = m.partition AND w.member = $3 \
             WHERE m.destination = $4 AND m.seq > o.committed",
        )
        .bind(&self.sub.group)
        .bind(&self.sub.group)
        .bind(&*self.member)
        .bind(&self.sub.destination)
        .fetch_one(self.bus.store.pool())
        .await;
        if let Ok((n,)) = lag {
            metrics::gauge!("keel_messaging_consumer_lag", "destination" => self.sub.destination.clone(), "group" => self.sub.group.clone())
                .set(n as f64);
        }
    }

    /// The group's position in `partition` (created at 0 the first time: a write only then).
    async fn offset(&self, partition: u32) -> Result<(i64, u32, i64), BusError> {
        let read = || async {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT committed, attempts, retry_at FROM bus_offsets WHERE destination = $1 AND grp = $2 AND partition = $3",
            )
            .bind(&self.sub.destination)
            .bind(&self.sub.group)
            .bind(i64::from(partition))
            .fetch_optional(self.bus.store.pool())
            .await
            .map_err(|e| unavailable(e.into()))
        };
        if let Some(row) = read().await? {
            return Ok((row.0, row.1.max(0) as u32, row.2));
        }
        self.bus.store.write(sqlx::query(
            "INSERT INTO bus_offsets (destination, grp, partition, committed, attempts, retry_at) \
             VALUES ($1, $2, $3, 0, 0, 0) ON CONFLICT (destination, grp, partition) DO NOTHING",
        )
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(i64::from(partition))
        )
        .await
        .map_err(unavailable)?;
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT committed, attempts, retry_at FROM bus_offsets WHERE destination = $1 AND grp = $2 AND partition = $3",
        )
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(i64::from(partition))
        .fetch_one(self.bus.store.pool())
        .await
        .map_err(|e| unavailable(e.into()))?;
        Ok((row.0, row.1.max(0) as u32, row.2))
    }

    /// Saves the position, only while this member still owns the partition (`Ok(false)`
    /// when it does not any more).
    async fn save(
        &self,
        partition: u32,
        committed: i64,
        attempts: u32,
        retry_at: i64,
    ) -> Result<bool, BusError> {
        let (reply, answer) = oneshot::channel();
        let request = SaveRequest {
            partition,
            committed,
            attempts,
            retry_at,
            reply,
        };
        if self.saves.send(request).is_err() {
            return Err(BusError::Unavailable("the offset saver has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("the offset saver has stopped".into())))
    }

    /// Moves `message` to the dead-letter destination and past it, atomically.
    async fn dead_letter(
        &self,
        partition: u32,
        seq: i64,
        message: &Message,
        attempts: u32,
        error: &HandlerError,
    ) -> Result<(), BusError> {
        let dl = self.sub.dead_letter_message(message, attempts, error);
        let mut tx = self.bus.store.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO bus_messages (destination, partition, message_id, msg_key, headers, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&dl.destination)
        .bind(i64::from(dl.partition(self.bus.settings.partitions)))
        .bind(&dl.id)
        .bind(dl.key.clone())
        .bind(serde_json::to_string(&dl.headers).unwrap_or_else(|_| "{}".into()))
        .bind(serde_json::to_string(&dl.payload).unwrap_or_else(|_| "null".into()))
        .bind(now_ms())
        .execute(tx.conn())
        .await
        .map_err(|e| unavailable(e.into()))?;
        sqlx::query(
            "UPDATE bus_offsets SET committed = $1, attempts = 0, retry_at = 0 WHERE destination = $2 AND grp = $3 AND partition = $4",
        )
        .bind(seq)
        .bind(&self.sub.destination)
        .bind(&self.sub.group)
        .bind(i64::from(partition))
        .execute(tx.conn())
        .await
        .map_err(|e| unavailable(e.into()))?;
        tx.commit().await.map_err(unavailable)?;
        metrics::counter!("keel_messaging_dead_lettered_total", "destination" => self.sub.destination.clone(), "group" => self.sub.group.clone())
            .increment(1);
        tracing::warn!(destination = %self.sub.destination, group = %self.sub.group, message_id = %message.id, attempts, error = %error, "message dead-lettered");
        self.bus
            .waker
            .wake(
                &dl.destination,
                &[dl.partition(self.bus.settings.partitions)],
            )
            .await;
        Ok(())
    }

    async fn partition(self, partition: u32, stop: CancellationToken) {
        let mut wake = self.bus.waker.subscribe(&self.sub.destination, partition);
        let poll = self.bus.settings.poll;
        // The position as last saved by this owner: read once, then kept here, so an idle
        // partition (woken by every publish to its destination, and by the poll) only reads.
        // Read again after any error; a lost lease shows when saving.
        let mut known: Option<(i64, u32, i64)> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (mut committed, mut attempts, retry_at) = match known {
                Some(k) => k,
                None => match self.offset(partition).await {
                    Ok(o) => {
                        known = Some(o);
                        o
                    }
                    Err(_) => {
                        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(poll) => continue }
                    }
                },
            };
            let wait = retry_at - now_ms();
            if wait > 0 {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                }
                continue;
            }
            let rows = sqlx::query(
                "SELECT seq, message_id, msg_key, headers, payload FROM bus_messages \
                 WHERE destination = $1 AND partition = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(&self.sub.destination)
            .bind(i64::from(partition))
            .bind(committed)
            .bind(self.bus.settings.batch)
            .fetch_all(self.bus.store.pool())
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(_) => {
                    known = None;
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(poll) => continue }
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            }
            let mut retry_at = 0;
            let mut progressed = false;
            // Whether the loop below stopped before the end of `rows`.
            let mut cut = false;
            for row in &rows {
                if stop.is_cancelled() {
                    cut = true;
                    break;
                }
                let seq: i64 = row.try_get("seq").unwrap_or(committed);
                let message = match decode(&self.sub.destination, row) {
                    Ok(m) => m,
                    Err(e) => {
                        // A row that cannot be read goes to the dead letters as stored: its
                        // id, key, headers and payload text kept, the decode error attached.
                        let (raw, err) = unreadable(&self.sub.destination, row, &e);
                        if self
                            .dead_letter(partition, seq, &raw, attempts + 1, &err)
                            .await
                            .is_err()
                        {
                            cut = true;
                            break;
                        }
                        committed = seq;
                        attempts = 0;
                        progressed = false;
                        continue;
                    }
                };
                let delivery = Delivery {
                    message: message.clone(),
                    attempt: attempts + 1,
                    partition,
                };
                // A panic is a failed attempt like any other error: caught here, it follows
                // the redelivery and dead-letter rules instead of killing this task (which
                // would restart at the same offset with the attempt count unchanged).
                match handle_catching_panics(self.handler.as_ref(), delivery).await {
                    Ok(()) => {
                        committed = seq;
                        attempts = 0;
                        progressed = true;
                        metrics::counter!("keel_messaging_delivered_total", "destination" => self.sub.destination.clone(), "group" => self.sub.group.clone())
                            .increment(1);
                    }
                    Err(e) => match self.sub.after_failure(attempts + 1, &e) {
                        AfterFailure::RetryAfter(d) => {
                            attempts += 1;
                            retry_at = now_ms() + d.as_millis() as i64;
                            metrics::counter!("keel_messaging_redelivered_total", "destination" => self.sub.destination.clone(), "group" => self.sub.group.clone())
                                .increment(1);
                            tracing::debug!(message_id = %message.id, attempt = attempts, error = %e, "handler failed; will redeliver");
                            cut = true;
                            break;
                        }
                        AfterFailure::DeadLetter => {
                            // Save progress so far, then move this one aside atomically.
                            if progressed {
                                let _ = self.save(partition, committed, 0, 0).await;
                            }
                            if self
                                .dead_letter(partition, seq, &message, attempts + 1, &e)
                                .await
                                .is_err()
                            {
                                cut = true;
                                break;
                            }
                            committed = seq;
                            attempts = 0;
                            progressed = false;
                        }
                    },
                }
            }
            // Every row read was handled and they were fewer than a batch: the partition was
            // drained as of that read. A publish since then has bumped `wake`, so wait on it
            // (or the poll) rather than read again only to find nothing.
            let drained = !cut && (rows.len() as i64) < self.bus.settings.batch;
            match self.save(partition, committed, attempts, retry_at).await {
                Ok(true) => {
                    known = Some((committed, attempts, retry_at));
                    if drained {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = wake.changed() => {}
                            _ = tokio::time::sleep(poll) => {}
                        }
                    }
                }
                Ok(false) => {
                    tracing::info!(destination = %self.sub.destination, partition, "lost the partition's lease; stopping");
                    return;
                }
                Err(_) => known = None,
            }
        }
    }
}

/// A partition's position to save, and where to say whether it was saved.
struct SaveRequest {
    partition: u32,
    committed: i64,
    attempts: u32,
    retry_at: i64,
    reply: oneshot::Sender<Result<bool, BusError>>,
}

/// Saves the positions of a member's partitions: the requests queued while one statement
/// runs go together in the next (a publish wakes every partition it touched, and they
/// finish at about the same time), so a wake-up costs one write instead of one per
/// partition. Ends when the member and all its partition tasks are gone.
struct Saver {
    bus: SqliteBus,
    sub: Arc<Subscription>,
    member: Arc<str>,
}

/// Positions saved per statement at most (7 parameters each, and 5 more).
const SAVES_PER_STATEMENT: usize = 256;

impl Saver {
    async fn run(self, mut queued: mpsc::UnboundedReceiver<SaveRequest>) {
        let mut batch = Vec::new();
        while queued.recv_many(&mut batch, SAVES_PER_STATEMENT).await > 0 {
            let saved = self.save_all(&batch).await;
            for request in batch.drain(..) {
                let answer = match &saved {
                    Ok(held) => Ok(held.contains(&i64::from(request.partition))),
                    Err(e) => Err(e.clone()),
                };
                let _ = request.reply.send(answer);
            }
        }
    }

    /// Saves every position in `batch` whose partition this member still owns, in one
    /// statement; returns the partitions saved.
    async fn save_all(&self, batch: &[SaveRequest]) -> Result<Vec<i64>, BusError> {
        let sql = multi_offset_update(batch.len());
        // Only numbered placeholders are formatted into the text.
        let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
        for column in 0..3 {
            for r in batch {
                let value = match column {
                    0 => r.committed,
                    1 => i64::from(r.attempts),
                    _ => r.retry_at,
                };
                query = query.bind(i64::from(r.partition)).bind(value);
            }
        }
        query = query.bind(&self.sub.destination).bind(&self.sub.group);
        for r in batch {
            query = query.bind(i64::from(r.partition));
        }
        query = query
            .bind(&self.sub.destination)
            .bind(&self.sub.group)
            .bind(&*self.member);
        let mut tx = self.bus.store.begin().await.map_err(unavailable)?;
        let saved = query
            .fetch_all(tx.conn())
            .await
            .map_err(|e| unavailable(e.into()))?;
        tx.commit().await.map_err(unavailable)?;
        Ok(saved.into_iter().map(|(p,)| p).collect())
    }
}

/// `UPDATE bus_offsets …` setting `committed`, `attempts` and `retry_at` of `n` partitions
/// (a `CASE` per column), only where this member owns the partition, returning the
/// partitions updated. Parameters: (partition, value) pairs for each column in turn, the
/// destination, group, the `n` partitions, then destination, group and member.
fn multi_offset_update(n: usize) -> String {
    let mut next = 0;
    let mut param = || {
        next += 1;
        format!("${next}")
    };
    let mut sql = String::from("UPDATE bus_offsets SET ");
    for (i, column) in ["committed", "attempts", "retry_at"].iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(column);
        sql.push_str(" = CASE partition");
        for _ in 0..n {
            let (p, v) = (param(), param());
            sql.push_str(&format!(" WHEN {p} THEN {v}"));
        }
        sql.push_str(&format!(" ELSE {column} END"));
    }
    let (d, g) = (param(), param());
    sql.push_str(&format!(
        " WHERE destination = {d} AND grp = {g} AND partition IN ("
    ));
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&param());
    }
    let (d, g, m) = (param(), param(), param());
    sql.push_str(&format!(
        ") AND partition IN (SELECT partition FROM bus_owners WHERE destination = {d} AND grp = {g} AND member = {m}) RETURNING partition"
    ));
    sql
}

/// The dead-letter copy of a row that [`decode`] refused, and the error to attach: the
/// row's id and key; its headers when they parse (else empty, with the stored text in
/// `keel-raw-headers`); its payload when it parses (else the stored text as a JSON string,
/// marked by `keel-raw-payload: true`).
fn unreadable(destination: &str, row: &sqlx::any::AnyRow, error: &str) -> (Message, HandlerError) {
    let text = |c: &str| row.try_get::<String, _>(c).ok();
    let mut m = Message::new(destination.to_owned(), serde_json::Value::Null);
    if let Some(id) = text("message_id") {
        m.id = id;
    }
    m.key = row.try_get::<Option<String>, _>("msg_key").ok().flatten();
    if let Some(h) = text("headers") {
        match serde_json::from_str(&h) {
            Ok(parsed) => m.headers = parsed,
            Err(_) => {
                m.headers.clear();
                m.headers.insert(headers::RAW_HEADERS.to_owned(), h);
            }
        }
    }
    if let Some(p) = text("payload") {
        m.payload = serde_json::from_str(&p).unwrap_or_else(|_| {
            m.headers
                .insert(headers::RAW_PAYLOAD.to_owned(), "true".to_owned());
            serde_json::Value::String(p)
        });
    }
    (
        m,
        HandlerError::reject(format!("unreadable message: {error}")),
    )
}

fn decode(destination: &str, row: &sqlx::any::AnyRow) -> Result<Message, String> {
    let s = |c: &str| row.try_get::<String, _>(c).map_err(|e| e.to_string());
    Ok(Message {
        id: s("message_id")?,
        destination: destination.to_owned(),
        key: row.try_get("msg_key").map_err(|e| e.to_string())?,
        headers: serde_json::from_str(&s("headers")?).map_err(|e| format!("headers: {e}"))?,
        payload: serde_json::from_str(&s("payload")?).map_err(|e| format!("payload: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use keel_store::testing::TempDir;

    use super::*;
    use crate::Settings;

    async fn exec(bus: &SqliteBus, sql: &str) {
        bus.store
            .write(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())))
            .await
            .unwrap();
    }

    /// Several positions in one statement: each partition gets its own three values, and a
    /// partition another member owns is neither changed nor reported saved.
    #[tokio::test]
    async fn one_statement_saves_each_owned_partition_its_own_position() {
        let dir = TempDir::new("bus-saver");
        let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), Settings::default())
            .await
            .unwrap();
        for p in 0..4 {
            exec(&bus, &format!("INSERT INTO bus_offsets (destination, grp, partition, committed) VALUES ('d', 'g', {p}, 0)")).await;
            let owner = if p == 1 { "other" } else { "me" };
            exec(&bus, &format!("INSERT INTO bus_owners (destination, grp, partition, member, lease_until) VALUES ('d', 'g', {p}, '{owner}', 0)")).await;
        }
        let saver = Saver {
            bus: bus.clone(),
            sub: Arc::new(Subscription::new("d", "g")),
            member: Arc::from("me"),
        };
        let request = |partition: u32, committed: i64| SaveRequest {
            partition,
            committed,
            attempts: partition + 1,
            retry_at: committed * 10,
            reply: oneshot::channel().0,
        };
        let mut saved = saver
            .save_all(&[request(2, 20), request(1, 10), request(0, 5)])
            .await
            .unwrap();
        saved.sort_unstable();
        assert_eq!(saved, [0, 2]);
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT partition, committed, attempts, retry_at FROM bus_offsets ORDER BY partition",
        )
        .fetch_all(bus.store.pool())
        .await
        .unwrap();
        assert_eq!(
            rows,
            [(0, 5, 1, 50), (1, 0, 0, 0), (2, 20, 3, 200), (3, 0, 0, 0)]
        );
    }
}
