//! What an edge knows is revoked, as plain data: the rules every host's deny-list follows, so the
//! Worker, the filter and the origin cannot drift apart.
//!
//! - A revocation is kept until [`Revocation::holds_until`]: the revoked token's `exp` plus the
//!   leeway, the last moment it could still pass.
//! - A user's revoke-all watermark **only ever rises**. The feed is public and a pushed entry is
//!   accepted by its signature alone, so an old revoke-all replayed (or two delivered out of
//!   order) must not lower it: that would bring back every token issued between the two.
//! - Applying the same revocation twice changes nothing, so a host may re-read the feed from any
//!   earlier cursor (after losing shared state, say) and only ever repairs.

use alloc::{collections::BTreeMap, string::String};

use crate::{
    gate::{DenyListStatus, RevocationAnswer, RevocationCheck, WatermarkStatus},
    revocation::Revocation,
};

/// A user's revoke-all: tokens issued through `revoked_through` are refused until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    /// Seconds since the epoch: tokens with `iat` up to this are revoked.
    pub revoked_through: i64,
    /// Seconds since the epoch, leeway included: when the last such token has expired.
    pub until: i64,
}

impl Watermark {
    /// The watermark after `other` is also applied: the higher of each, so it never falls and
    /// never ends sooner.
    pub fn raised(self, other: Watermark) -> Watermark {
        Watermark {
            revoked_through: self.revoked_through.max(other.revoked_through),
            until: self.until.max(other.until),
        }
    }
}

/// What applying a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Something new is revoked (or held longer).
    Changed,
    /// Already known: nothing to store.
    Unchanged,
}

/// Revoked tokens, sessions and users, each until it no longer matters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyState {
    tokens: BTreeMap<String, i64>,
    sessions: BTreeMap<String, i64>,
    users: BTreeMap<String, Watermark>,
}

fn hold(map: &mut BTreeMap<String, i64>, key: &str, until: i64) -> Applied {
    match map.get_mut(key) {
        Some(held) if *held >= until => Applied::Unchanged,
        Some(held) => {
            *held = until;
            Applied::Changed
        }
        None => {
            map.insert(key.into(), until);
            Applied::Changed
        }
    }
}

impl DenyState {
    /// Applies a checked revocation, kept until its expiry plus `leeway`.
    pub fn apply(&mut self, revocation: &Revocation, leeway: i64) -> Applied {
        let until = revocation.holds_until(leeway);
        match revocation {
            Revocation::Token { jti, .. } => hold(&mut self.tokens, jti, until),
            Revocation::Session { sid, .. } => hold(&mut self.sessions, sid, until),
            Revocation::User {
                subject,
                revoked_through,
                ..
            } => {
                let new = Watermark {
                    revoked_through: *revoked_through,
                    until,
                };
                self.raise(subject, new)
            }
        }
    }

    /// Raises a user's watermark to at least `new`.
    pub fn raise(&mut self, subject: &str, new: Watermark) -> Applied {
        match self.users.get_mut(subject) {
            Some(held) if held.raised(new) == *held => Applied::Unchanged,
            Some(held) => {
                *held = held.raised(new);
                Applied::Changed
            }
            None => {
                self.users.insert(subject.into(), new);
                Applied::Changed
            }
        }
    }

    /// Everything `other` holds, applied here.
    pub fn merge(&mut self, other: &DenyState) {
        for (jti, until) in &other.tokens {
            hold(&mut self.tokens, jti, *until);
        }
        for (sid, until) in &other.sessions {
            hold(&mut self.sessions, sid, *until);
        }
        for (subject, watermark) in &other.users {
            self.raise(subject, *watermark);
        }
    }

    /// Whether the `jti` is revoked at `now`.
    pub fn token_revoked(&self, jti: &str, now: i64) -> bool {
        self.tokens.get(jti).is_some_and(|until| now < *until)
    }

    /// Whether the session is revoked at `now`.
    pub fn session_revoked(&self, sid: &str, now: i64) -> bool {
        self.sessions.get(sid).is_some_and(|until| now < *until)
    }

    /// The user's watermark in force at `now`.
    pub fn watermark(&self, subject: &str, now: i64) -> Option<Watermark> {
        self.users.get(subject).copied().filter(|w| now < w.until)
    }

    /// The answer for a token at `now`. `complete` says whether this state can vouch for what
    /// it does not hold (the host read its source recently enough); a revocation it holds is an
    /// answer however old the state.
    pub fn answer(&self, check: &RevocationCheck, now: i64, complete: bool) -> RevocationAnswer {
        let listed = |revoked: bool| match (revoked, complete) {
            (true, _) => DenyListStatus::Listed,
            (false, true) => DenyListStatus::NotListed,
            (false, false) => DenyListStatus::Unavailable,
        };
        let user = match check.subject().and_then(|s| self.watermark(s, now)) {
            Some(w) => WatermarkStatus::RevokedThrough(w.revoked_through),
            None if complete => WatermarkStatus::None,
            None => WatermarkStatus::Unavailable,
        };
        RevocationAnswer {
            jti: listed(check.jti().is_some_and(|j| self.token_revoked(j, now))),
            session: listed(
                check
                    .session()
                    .is_some_and(|s| self.session_revoked(s, now)),
            ),
            user,
        }
    }

    /// Drops what no longer matters at `now`.
    pub fn sweep(&mut self, now: i64) {
        self.tokens.retain(|_, until| now < *until);
        self.sessions.retain(|_, until| now < *until);
        self.users.retain(|_, w| now < w.until);
    }

    /// Entries held (tokens, sessions and users), expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.users.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latest moment anything held still matters (`None` when empty).
    pub fn latest_until(&self) -> Option<i64> {
        self.tokens
            .values()
            .chain(self.sessions.values())
            .copied()
            .chain(self.users.values().map(|w| w.until))
            .max()
    }

    /// Every entry as a revocation (expiry already including the leeway, so apply it back with a
    /// leeway of 0), for a host that stores the state elsewhere.
    pub fn revocations(&self) -> impl Iterator<Item = Revocation> + '_ {
        let tokens = self.tokens.iter().map(|(jti, until)| Revocation::Token {
            jti: jti.clone(),
            expires_at: *until,
        });
        let sessions = self
            .sessions
            .iter()
            .map(|(sid, until)| Revocation::Session {
                sid: sid.clone(),
                expires_at: *until,
            });
        let users = self.users.iter().map(|(subject, w)| Revocation::User {
            subject: subject.clone(),
            revoked_through: w.revoked_through,
            expires_at: w.until,
        });
        tokens.chain(sessions).chain(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(through: i64, exp: i64) -> Revocation {
        Revocation::User {
            subject: "u".into(),
            revoked_through: through,
            expires_at: exp,
        }
    }

    #[test]
    fn a_watermark_never_falls_and_never_ends_sooner() {
        let mut state = DenyState::default();
        assert_eq!(state.apply(&user(2000, 2900), 30), Applied::Changed);
        // An older revoke-all, replayed or delivered late, changes nothing.
        assert_eq!(state.apply(&user(1000, 1900), 30), Applied::Unchanged);
        assert_eq!(
            state.watermark("u", 2000),
            Some(Watermark {
                revoked_through: 2000,
                until: 2930
            })
        );
        assert_eq!(state.apply(&user(3000, 3900), 30), Applied::Changed);
        assert_eq!(
            state.watermark("u", 3929).map(|w| w.revoked_through),
            Some(3000)
        );
        assert_eq!(state.watermark("u", 3930), None);
    }

    #[test]
    fn revocations_hold_through_the_leeway_and_repeat_harmlessly() {
        let mut state = DenyState::default();
        let token = Revocation::Token {
            jti: "j".into(),
            expires_at: 1000,
        };
        let session = Revocation::Session {
            sid: "s".into(),
            expires_at: 1000,
        };
        for r in [&token, &session] {
            assert_eq!(state.apply(r, 30), Applied::Changed);
            assert_eq!(state.apply(r, 30), Applied::Unchanged);
        }
        assert!(state.token_revoked("j", 1029) && state.session_revoked("s", 1029));
        assert!(!state.token_revoked("j", 1030) && !state.session_revoked("s", 1030));
        assert_eq!(state.latest_until(), Some(1030));
        state.sweep(1030);
        assert!(state.is_empty());
    }

    #[test]
    fn a_state_round_trips_through_its_revocations() {
        let mut state = DenyState::default();
        state.apply(&user(2000, 2900), 30);
        state.apply(
            &Revocation::Token {
                jti: "j".into(),
                expires_at: 1000,
            },
            30,
        );
        let mut copy = DenyState::default();
        for r in state.revocations() {
            copy.apply(&r, 0);
        }
        assert_eq!(copy, state);
        let mut merged = DenyState::default();
        merged.apply(&user(2500, 2000), 0);
        merged.merge(&state);
        assert_eq!(
            merged
                .watermark("u", 0)
                .map(|w| (w.revoked_through, w.until)),
            Some((2500, 2930))
        );
    }
}
