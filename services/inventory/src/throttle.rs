//! Failed-login throttling. Each attempt is counted before its password is
//! checked, so parallel guesses cannot outrun the limit, under three keys:
//! the user from this client address (locked first, at `max_failures`), the
//! client address across users (credential stuffing, 10x), and the user from
//! anywhere (4x). A user locked from everywhere still signs in from an address
//! that has no failures for them: knowing a user name is not enough to lock
//! its owner out. Keys are the typed names, so unknown users behave alike.
use crate::store::{self, ThrottleRow};
use rdm_kit::{Error, ErrorCode, Result, db::TenantTx};
use std::time::Duration;

/// Failed-login throttling settings.
#[derive(Clone, Debug)]
pub struct LoginThrottle {
    /// Failures of one user from one address before that pair is locked.
    pub max_failures: i64,
    pub window: Duration,
    pub lockout: Duration,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
        }
    }
}

/// An attempt's keys: user from this address, this address, user anywhere.
pub(crate) struct Attempt {
    keys: [(String, i64, &'static str); 3],
}

impl LoginThrottle {
    pub(crate) fn attempt(&self, slug: &str, username: &str, client: &str) -> Attempt {
        let max = self.max_failures.max(1);
        Attempt {
            keys: [
                (
                    format!("u\n{slug}\n{username}\n{client}"),
                    max,
                    "user_address",
                ),
                (format!("a\n{client}"), max * 10, "address"),
                (format!("u\n{slug}\n{username}"), max * 4, "user"),
            ],
        }
    }

    /// Counts the attempt (as a failure until it succeeds) and decides whether
    /// its password may be checked at all.
    pub(crate) async fn admit(&self, tx: &mut TenantTx, attempt: &Attempt, now: i64) -> Result<()> {
        let mut rows: Vec<ThrottleRow> = Vec::with_capacity(3);
        for (key, max, _) in &attempt.keys {
            rows.push(
                store::record_failure(
                    tx,
                    key,
                    now,
                    self.window.as_millis() as i64,
                    *max,
                    self.lockout.as_millis() as i64,
                )
                .await?,
            );
        }
        let over = |i: usize| rows[i].failures > attempt.keys[i].1 && rows[i].locked_until > now;
        // The user is locked everywhere only for addresses that failed for them.
        let refused = if over(0) {
            Some(0)
        } else if over(1) {
            Some(1)
        } else if over(2) && rows[0].failures > 1 {
            Some(2)
        } else {
            None
        };
        match refused {
            Some(i) => {
                metrics::counter!("rdm_login_refused_total", "scope" => attempt.keys[i].2)
                    .increment(1);
                Err(locked_out(rows[i].locked_until - now))
            }
            None => Ok(()),
        }
    }

    /// A correct password: the user's counts go, the address's loses this one.
    pub(crate) async fn succeeded(&self, tx: &mut TenantTx, attempt: &Attempt) -> Result<()> {
        store::clear_throttle(tx, &attempt.keys[0].0).await?;
        store::clear_throttle(tx, &attempt.keys[2].0).await?;
        store::forgive_one(tx, &attempt.keys[1].0).await
    }

    /// An attempt whose password could not be checked (the tenant's
    /// identity provider was down): it no longer counts against anyone.
    pub(crate) async fn not_checked(&self, tx: &mut TenantTx, attempt: &Attempt) -> Result<()> {
        for (key, _, _) in &attempt.keys {
            store::forgive_one(tx, key).await?;
        }
        Ok(())
    }

    /// A wrong password (already counted): logged when it locks a key.
    pub(crate) fn failed(&self, attempt: &Attempt, slug: &str) {
        metrics::counter!("rdm_login_failures_total").increment(1);
        tracing::info!(tenant = %slug, key = attempt.keys[0].2, "login failed");
    }
}

fn locked_out(remaining_ms: i64) -> Error {
    let wait = (remaining_ms.max(0) + 999) / 1000;
    Error::new(
        ErrorCode::TooManyRequests,
        format!("too many failed logins; try again in {wait} s"),
    )
    .with_meta("retry_after_s", wait.to_string())
}
