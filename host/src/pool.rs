//! The host's data connections to the agent, for the current session: a
//! small set of idle ones, opened and greeted (`Data` with the session's
//! ticket) ahead of need, so a client's connection costs no connect on its
//! critical path; each comes back after a clean end and waits for the next
//! client. The set is bounded ([`MAX_IDLE_DATA`]); a new session, or none,
//! discards it. An idle connection costs no wake-ups on either side: nothing
//! reads it until it is taken, and a peek when it is taken tells one the
//! agent closed (it ended the session, or restarted) from one that is fit.

use anyhow::{anyhow, Context, Result};
use hoist_net::{connect, Addr, Stream};
use hoist_wire::{HostMsg, Message, Ticket, MAX_IDLE_DATA, PROTOCOL_VERSION};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;

/// Idle data connections kept ready: enough for a burst of clients to start
/// without a connect each; more accumulate (up to [`MAX_IDLE_DATA`]) when
/// that many clients were carried at once.
pub const READY: usize = 4;

/// The current session's data connections; clones share them.
#[derive(Clone, Debug, Default)]
pub struct DataPool(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    session: Option<Session>,
    idle: Vec<Stream>,
    /// Connections being opened for `idle`.
    filling: usize,
    /// Sessions started so far: tells a connection of an old one.
    generation: u64,
}

#[derive(Clone, Debug)]
struct Session {
    addr: Addr,
    ticket: Ticket,
    generation: u64,
}

/// A data connection taken for one client.
pub struct DataConn {
    /// The connection.
    pub stream: Stream,
    generation: u64,
    /// The ticket still to present: a connection opened for this client.
    pub greeting: Option<Ticket>,
}

impl DataPool {
    /// A session is up with the agent at `addr`: discards the old one's
    /// connections and opens [`READY`] for this one.
    pub fn start(&self, addr: Addr, ticket: Ticket) {
        let mut st = self.lock();
        st.generation += 1;
        st.session = Some(Session { addr, ticket, generation: st.generation });
        st.idle.clear();
        st.filling = 0;
        self.top_up(&mut st);
    }

    /// No session: data connections cannot be opened, idle ones are closed.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.session = None;
        st.idle.clear();
    }

    /// A data connection for a client: an idle one that is still fit, or a
    /// new one (still to be greeted) when none is.
    pub async fn take(&self) -> Result<DataConn> {
        let session = {
            let mut st = self.lock();
            let session = st.session.clone().ok_or_else(|| anyhow!("no session with the agent"))?;
            let mut fit = None;
            while let Some(stream) = st.idle.pop() {
                if stream.is_quiet() {
                    fit = Some(stream);
                    break;
                }
            }
            self.top_up(&mut st);
            if let Some(stream) = fit {
                return Ok(DataConn { stream, generation: session.generation, greeting: None });
            }
            session
        };
        let stream = connect(&session.addr).await.context("opening a data connection")?;
        Ok(DataConn { stream, generation: session.generation, greeting: Some(session.ticket) })
    }

    /// A connection whose client ended cleanly: it waits for the next one,
    /// unless its session is over or enough wait already.
    pub fn put_back(&self, conn: DataConn) {
        let mut st = self.lock();
        let current = st.session.as_ref().is_some_and(|s| s.generation == conn.generation);
        if current && st.idle.len() < MAX_IDLE_DATA {
            st.idle.push(conn.stream);
        }
    }

    /// Idle connections now.
    #[cfg(all(test, unix))]
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Opens connections until [`READY`] are idle or on their way.
    fn top_up(&self, st: &mut State) {
        let Some(session) = &st.session else { return };
        while st.idle.len() + st.filling < READY {
            st.filling += 1;
            tokio::spawn(self.clone().fill(session.clone()));
        }
    }

    /// Opens and greets one idle connection. A failure is not retried here:
    /// the next client tops the set up again (and says why, if it must
    /// connect itself).
    async fn fill(self, session: Session) {
        let opened = async {
            let mut stream = connect(&session.addr).await?;
            stream.write_all(&greeting(session.ticket)).await?;
            anyhow::Ok(stream)
        }
        .await;
        let mut st = self.lock();
        if st.session.as_ref().is_some_and(|s| s.generation == session.generation) {
            st.filling -= 1;
            if let Ok(stream) = opened {
                if st.idle.len() < MAX_IDLE_DATA {
                    st.idle.push(stream);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The first frame of a data connection.
pub fn greeting(ticket: Ticket) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    HostMsg::Data { version: PROTOCOL_VERSION, ticket }.encode_frame(&mut out);
    out
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// Reads one greeting from each of `n` connections, returning them.
    async fn accept_greeted(l: &UnixListener, n: usize) -> Vec<tokio::net::UnixStream> {
        let want = greeting([7; 16]);
        let mut out = Vec::new();
        for _ in 0..n {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![0; want.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            out.push(s);
        }
        out
    }

    async fn until_idle(pool: &DataPool, n: usize) {
        while pool.idle() != n {
            tokio::task::yield_now().await;
        }
    }

    /// A session opens READY greeted connections; a taken one is replaced,
    /// comes back after use, and the set never exceeds its bound; one the
    /// agent closed is passed over; a new session discards the old set.
    #[tokio::test]
    async fn the_pool_is_ready_bounded_and_per_session() {
        let dir = std::env::temp_dir().join(format!("hoist-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let pool = DataPool::default();
        pool.start(Addr::Unix(path.clone()), [7; 16]);
        let mut agent_side = accept_greeted(&l, READY).await;
        until_idle(&pool, READY).await;

        // Taken: pre-greeted, and one more is opened in its place.
        let taken = pool.take().await.unwrap();
        assert!(taken.greeting.is_none());
        agent_side.extend(accept_greeted(&l, 1).await);
        until_idle(&pool, READY).await;
        pool.put_back(taken);
        assert_eq!(pool.idle(), READY + 1);

        // Closed by the agent: passed over at take.
        agent_side.clear();
        let mut taken = pool.take().await.unwrap();
        assert_eq!(taken.greeting, Some([7; 16]), "none fit: a new one, still to greet");
        taken.stream.write_all(&greeting([7; 16])).await.unwrap();
        let _refilled = accept_greeted(&l, 1 + READY).await;
        until_idle(&pool, READY).await;

        // Bounded: no more than MAX_IDLE_DATA wait.
        let mut many = Vec::new();
        for _ in 0..MAX_IDLE_DATA + 3 {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            many.push(b);
            pool.put_back(DataConn { stream: Stream::Unix(a), generation: 1, greeting: None });
        }
        assert_eq!(pool.idle(), MAX_IDLE_DATA);

        // A new session: the old set is gone, and its connections are not
        // taken back.
        pool.start(Addr::Unix(path.clone()), [7; 16]);
        assert_eq!(pool.idle(), 0);
        pool.put_back(taken);
        assert_eq!(pool.idle(), 0);
        pool.stop();
        assert!(pool.take().await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
