//! One relayed pair of sockets (the accepted one and the one dialled for
//! it) as a pure state machine: each completion the ring reports goes in,
//! the operations to submit next come out. No framing, no opening, no pool:
//! bytes in one side, the same bytes out of the other, an end passed on as a
//! shutdown and an error as a reset, which is all a relay must do.

/// A direction of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the accepted socket to the dialled one.
    Up,
    /// From the dialled socket to the accepted one.
    Down,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the ring reported for one of the pair's operations (its result, as
/// io_uring gives it: a count, or a negated errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Connected(i32),
    Received(Dir, i32),
    Sent(Dir, i32),
    Shut(Dir),
    Closed,
}

/// An operation to submit (or, `Abort`, to carry out at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read into the direction's buffer from its source.
    Recv(Dir),
    /// Write the direction's unsent bytes `from..to` of its buffer to its
    /// destination.
    Send(Dir, usize, usize),
    /// The direction's source ended: shut its destination's write side.
    ShutWrite(Dir),
    /// An error on either side: reset both sockets (SO_LINGER 0) and shut
    /// their reading side, so that receives still pending complete.
    Abort,
    /// Close both sockets (two completions follow).
    Close,
}

/// What one event leads to: at most two operations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Next {
    pub ops: Vec<Op>,
    /// The pair is finished: both sockets closed, nothing pending.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    len: usize,
    sent: usize,
    ended: bool,
}

/// A pair's state: each direction's unsent bytes and end, the operations in
/// flight (a pair is freed only when none is, since each holds its buffer or
/// descriptor), and how far its closing got.
#[derive(Debug, Default)]
pub struct Pair {
    flows: [Flow; 2],
    in_flight: u32,
    aborted: bool,
    closes_left: Option<u32>,
}

impl Pair {
    /// A pair whose dial was just submitted.
    pub fn dialling() -> Pair {
        Pair { in_flight: 1, ..Pair::default() }
    }

    pub fn on(&mut self, event: Event) -> Next {
        self.in_flight -= 1;
        let mut ops = Vec::with_capacity(2);
        match event {
            Event::Connected(r) if r < 0 => self.abort(&mut ops),
            Event::Connected(_) => ops.extend(Dir::BOTH.map(Op::Recv)),
            Event::Received(_, _) | Event::Sent(_, _) if self.aborted => {}
            Event::Received(_, r) if r < 0 => self.abort(&mut ops),
            Event::Received(d, 0) => {
                self.flows[d.index()].ended = true;
                ops.push(Op::ShutWrite(d));
            }
            Event::Received(d, n) => {
                self.flows[d.index()] = Flow { len: n as usize, sent: 0, ended: false };
                ops.push(Op::Send(d, 0, n as usize));
            }
            Event::Sent(_, r) if r < 0 => self.abort(&mut ops),
            Event::Sent(d, n) => {
                let f = &mut self.flows[d.index()];
                f.sent += n as usize;
                ops.push(if f.sent < f.len { Op::Send(d, f.sent, f.len) } else { Op::Recv(d) });
            }
            Event::Shut(_) => {}
            Event::Closed => {
                let left =
                    self.closes_left.as_mut().expect("a close completed before any was sent");
                *left -= 1;
            }
        }
        self.in_flight += ops.iter().filter(|op| !matches!(op, Op::Abort)).count() as u32;
        let ended = self.aborted || self.flows.iter().all(|f| f.ended);
        if ended && self.in_flight == 0 && self.closes_left.is_none() {
            ops.push(Op::Close);
            self.closes_left = Some(2);
            self.in_flight += 2;
        }
        Next { ops, done: self.closes_left == Some(0) }
    }

    fn abort(&mut self, ops: &mut Vec<Op>) {
        if !self.aborted {
            self.aborted = true;
            ops.push(Op::Abort);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dir::{Down, Up};
    use Event::*;

    /// Feeds `events` to a fresh pair; the operations after each, and
    /// whether the pair was done after the last.
    fn run(events: &[Event]) -> (Vec<Vec<Op>>, bool) {
        let mut p = Pair::dialling();
        let mut done = false;
        let ops = events
            .iter()
            .map(|e| {
                let n = p.on(*e);
                done = n.done;
                n.ops
            })
            .collect();
        (ops, done)
    }

    #[test]
    fn each_event_leads_to_its_operations() {
        use Op::*;
        #[rustfmt::skip]
        let cases: &[(&str, &[Event], &[&[Op]], bool)] = &[
            ("a dial that fails resets the client",
             &[Connected(-111)], &[&[Abort, Close]], false),
            ("a dial that succeeds reads both ways",
             &[Connected(0)], &[&[Recv(Up), Recv(Down)]], false),
            ("bytes read are sent, then read again",
             &[Connected(0), Received(Up, 5), Sent(Up, 5)],
             &[&[Recv(Up), Recv(Down)], &[Send(Up, 0, 5)], &[Recv(Up)]], false),
            ("a short send sends the rest",
             &[Connected(0), Received(Down, 9), Sent(Down, 4), Sent(Down, 5)],
             &[&[Recv(Up), Recv(Down)], &[Send(Down, 0, 9)], &[Send(Down, 4, 9)], &[Recv(Down)]], false),
            ("an end is passed on; both ends and nothing pending close",
             &[Connected(0), Received(Up, 0), Shut(Up), Received(Down, 0), Shut(Down), Closed, Closed],
             &[&[Recv(Up), Recv(Down)], &[ShutWrite(Up)], &[], &[ShutWrite(Down)], &[Close], &[], &[]], true),
            ("a reset resets both; the close waits for the other side's read",
             &[Connected(0), Received(Up, -104), Received(Down, 0), Closed, Closed],
             &[&[Recv(Up), Recv(Down)], &[Abort], &[Close], &[], &[]], true),
            ("a failed send resets both",
             &[Connected(0), Received(Up, 3), Sent(Up, -32), Received(Down, -104)],
             &[&[Recv(Up), Recv(Down)], &[Send(Up, 0, 3)], &[Abort], &[Close]], false),
        ];
        for (name, events, want, done) in cases {
            let (ops, finished) = run(events);
            assert_eq!(ops, want.iter().map(|o| o.to_vec()).collect::<Vec<_>>(), "{name}");
            assert_eq!(finished, *done, "{name}: done");
        }
    }
}
