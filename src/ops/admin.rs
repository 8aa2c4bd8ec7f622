//! The state-changing commands an operator runs by hand: `resume`, `forget-tenant`, `dead-letter list` and
//! `retry`, `backup`. Each changes the state in one transaction and refuses, changing nothing, when asked
//! for something that does not hold (a resume of a tenant that is not stopped, a dead letter id that does
//! not exist, forgetting a tenant the config still names).

use std::io::Write;
use std::path::Path;

use std::collections::HashMap;

use crate::auth0::{self, Bootstrap, ById};
use crate::config::{Config, Start};
use crate::entry::LogId;
use crate::pipeline::fetcher;
use crate::pipeline::lock::{Holder, StateLock, Waited};
use crate::store::{DeadLetter, PageCommit, Store, StoreError};
use tokio_util::sync::CancellationToken;

use super::Error;

/// Write one line of a report, escaped: it may quote an error from Auth0 or a value read from the state.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, "{}", crate::logging::escape(&format!($($arg)*)));
    }};
}

/// `resume`: after an expired checkpoint with `on_expired_checkpoint = "stop"`, continue from the oldest
/// entry Auth0 still retains. Takes the state lock (so no daemon is fetching), and refuses unless fetching of
/// the tenant is stopped.
pub async fn resume(config: &Config, tenant: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
    let t = single(config, tenant, "resume")?;
    let _lock = StateLock::acquire(&config.state.path, "resume")?;
    let mut store = Store::open(&config.state.path)?;
    let domain = t.domain().to_string();
    if !store.fetching_stopped(&domain)? {
        return Err(StoreError::NotStopped { tenant: domain }.into());
    }
    let stored = store.load_token(&domain)?;
    let client = auth0::Client::with(
        &t.auth0,
        crate::http::client(t.auth0.tls_ca.as_ref())
            .map_err(|e| auth0::Error::Setup(crate::logging::Chain(&e).to_string()))?,
        crate::telemetry::TenantTelemetry::disabled(),
        stored,
        None,
    )?;
    let page = match client.bootstrap(&Start::Oldest).await? {
        Bootstrap::Found { entry, .. } => {
            // The entry is forwarded: the tenant's privacy rules apply to it as to every fetched entry.
            let rewrite = crate::pipeline::privacy_rewrite(t);
            let c =
                fetcher::classify(std::slice::from_ref(&entry), None, &t.auth0.filter, rewrite.as_deref());
            if c.first.is_none() {
                return Err(Error::Usage(format!(
                    "the oldest entry Auth0 retains for {domain} has no valid log_id ({}); nothing was changed",
                    c.first_problem.unwrap_or_default()
                )));
            }
            c.commit
        }
        Bootstrap::Empty | Bootstrap::After(_) => PageCommit::default(),
    };
    let cursor = page.cursor.as_ref().map(|c| c.log_id.to_string());
    store.resume(&domain, &page)?;
    say!(
        out,
        "{domain}: fetching resumes from the oldest retained entry ({})",
        cursor.as_deref().unwrap_or("the tenant has no entries yet")
    );
    Ok(())
}

/// `forget-tenant`: drop everything the state holds about a tenant the config no longer names.
///
/// The state key is found as written, else in any case when only one key matches: a key in upper case can only
/// come from an older version, and the config can no longer name it (domains are written in lower case).
pub fn forget_tenant(config: &Config, domain: &str, yes: bool, out: &mut dyn Write) -> Result<(), Error> {
    let named = |key: &str| {
        config.tenant(key).is_some().then(|| {
            Error::Usage(format!(
                "{key} is a tenant of {}; remove it from the config before forgetting its state",
                config.path.display()
            ))
        })
    };
    if let Some(e) = named(domain) {
        return Err(e);
    }
    let mut store = Store::open_existing(&config.state.path)?;
    // A daemon serving the state (even from a config that no longer names this tenant) would start the
    // tenant afresh and send everything again; any other holder is working with the state too.
    let _lock = StateLock::acquire(&config.state.path, "forget-tenant")?;
    let known = store.tenants()?;
    let found = match known.iter().find(|k| k.domain == domain) {
        Some(k) => Some(k),
        None => {
            let mut alike = known.iter().filter(|k| k.domain.eq_ignore_ascii_case(domain));
            match (alike.next(), alike.next()) {
                (Some(k), None) => Some(k),
                _ => None,
            }
        }
    };
    let Some(k) = found else {
        return Err(Error::Usage(format!(
            "the state {} holds no tenant {domain} (it holds: {})",
            config.state.path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.iter().map(|k| k.domain.as_str()).collect::<Vec<_>>().join(", ")
            }
        )));
    };
    if let Some(e) = named(&k.domain) {
        return Err(e);
    }
    if !yes {
        return Err(Error::Usage(format!(
            "forgetting {} drops {} undelivered entr{} and {} dead letter{} for good; add --yes to do it",
            k.domain,
            k.outbox,
            if k.outbox == 1 { "y" } else { "ies" },
            k.dead_letters,
            super::status::plural(k.dead_letters)
        )));
    }
    let (outbox, dead) = store.forget_tenant(&k.domain)?;
    say!(
        out,
        "forgot {}: dropped {outbox} undelivered entr{} and {dead} dead letter{}",
        k.domain,
        if outbox == 1 { "y" } else { "ies" },
        super::status::plural(dead)
    );
    Ok(())
}

/// `dead-letter list`.
pub fn dead_letters(config: &Config, tenant: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, Error> {
    let tenant = match tenant {
        Some(d) => Some(single(config, Some(d), "dead-letter")?.domain().to_string()),
        None => None,
    };
    match Store::open_existing(&config.state.path) {
        Ok(store) => Ok(store.dead_letters(tenant.as_deref(), limit)?),
        Err(StoreError::Missing { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// `dead-letter retry`: move dead letters back into the outbox (the given ids, or all of the tenant's, or all).
/// Beside a running daemon, which delivers them within about a second; any other holder of the state is
/// waited for, so that the rows are not queued behind a command about to end.
///
/// A letter kept with its text is queued again as it is. A withheld letter (kept without its text: see
/// `store::Kept`) is fetched again from Auth0 by its `log_id`: if the entry can now be read, the privacy
/// rules are applied and it is queued, and the letter deleted, in one transaction; otherwise it stays set
/// aside, and what happened is said for each letter. A withheld letter without a `log_id`, or of a tenant the
/// config no longer names, cannot be fetched and stays too. Auth0 failures are reported per letter and end
/// the command with an error once every letter was tried.
pub async fn retry_dead_letters(
    config: &Config,
    tenant: Option<&str>,
    ids: &[i64],
    shutdown: &CancellationToken,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let tenant = match tenant {
        Some(d) => Some(single(config, Some(d), "dead-letter")?.domain().to_string()),
        None => None,
    };
    let mut store = Store::open_existing(&config.state.path)?;
    let waited = StateLock::acquire_unless(
        &config.state.path,
        "dead-letter retry",
        |h| h.is_some_and(Holder::is_daemon),
        shutdown,
    )
    .await?;
    let daemon = match &waited {
        Waited::Taken(_) => None,
        Waited::Held(holder) => Some(crate::pipeline::lock::named(holder.as_ref())),
        Waited::Cancelled => return Err(Error::Usage("stopped by signal before anything was moved".into())),
    };
    let retried = store.retry_dead_letters(tenant.as_deref(), ids)?;
    let mut moved = retried.moved;
    say!(out, "{moved} dead letter{} moved back to the outbox", super::status::plural(moved));
    let mut clients: HashMap<String, auth0::Client> = HashMap::new();
    let mut failed: Option<auth0::Error> = None;
    for w in &retried.withheld {
        let which =
            format!("dead letter {} ({}, log_id {})", w.id, w.tenant, w.log_id.as_deref().unwrap_or("-"));
        let Some(log_id) = w.log_id.as_deref().and_then(|id| LogId::parse(id).ok()) else {
            say!(
                out,
                "{which} was kept without its text and has no log_id, so it cannot be fetched again: it stays set aside"
            );
            continue;
        };
        let Some(t) = config.tenant(&w.tenant) else {
            say!(
                out,
                "{which} was kept without its text, and the config no longer names its tenant to fetch it from: it stays set aside"
            );
            continue;
        };
        let client = match clients.get(&w.tenant) {
            Some(c) => c.clone(),
            None => {
                let stored = store.load_token(&w.tenant)?;
                let http = crate::http::client(t.auth0.tls_ca.as_ref())
                    .map_err(|e| auth0::Error::Setup(crate::logging::Chain(&e).to_string()))?;
                let c = auth0::Client::with(
                    &t.auth0,
                    http,
                    crate::telemetry::TenantTelemetry::disabled(),
                    stored,
                    None,
                )?;
                clients.insert(w.tenant.clone(), c.clone());
                c
            }
        };
        match client.log_by_id(&log_id).await {
            Ok(ById::Found(entry)) => {
                let rewritten = match crate::pipeline::privacy_rewrite(t) {
                    Some(rewrite) => rewrite(entry.get()),
                    None => Ok(entry.get().to_string()),
                };
                match rewritten {
                    Ok(raw) => {
                        if store.requeue_withheld(w.id, &log_id, &raw)? {
                            moved += 1;
                            say!(out, "{which} was fetched again from Auth0 and moved back to the outbox");
                        } else {
                            say!(out, "{which} was fetched again, but another retry took it meanwhile");
                        }
                    }
                    Err(why) => {
                        say!(
                            out,
                            "{which} was fetched again and still cannot be read by the privacy rules ({why}): it stays set aside without its text"
                        );
                    }
                }
            }
            Ok(ById::Unreadable(u)) => {
                say!(
                    out,
                    "{which} was fetched again and still cannot be read (not valid UTF-8 at byte {}): it stays set aside without its text",
                    u.invalid_at
                );
            }
            Ok(ById::Gone) => {
                say!(
                    out,
                    "{which}: Auth0 no longer holds this entry (it may be older than the tenant's log retention); it stays set aside without its text"
                );
            }
            Err(e) => {
                say!(
                    out,
                    "{which} could not be fetched again from Auth0 ({}): it stays set aside",
                    crate::logging::Chain(&e)
                );
                failed.get_or_insert(e);
            }
        }
    }
    if moved > 0 {
        match daemon {
            Some(d) => say!(out, "{d} delivers them"),
            None => say!(out, "no daemon is running: `run` or `sync` delivers them"),
        }
    }
    drop(waited);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// `backup PATH`: a consistent copy of the state, safe while `run` is using it.
pub fn backup(config: &Config, dest: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let store = Store::open_existing(&config.state.path)?;
    store.backup(dest)?;
    say!(out, "wrote a copy of {} to {}", config.state.path.display(), dest.display());
    Ok(())
}

/// The one tenant a command works on: the one named, or the only one.
pub fn single<'a>(
    config: &'a Config,
    tenant: Option<&str>,
    command: &str,
) -> Result<&'a crate::config::Tenant, Error> {
    match tenant {
        Some(d) => Ok(config.select(Some(d))?[0]),
        None if config.tenants.len() == 1 => Ok(&config.tenants[0]),
        None => Err(Error::Usage(format!(
            "{} names {} tenants; tell `{command}` which one with --tenant ({})",
            config.path.display(),
            config.tenants.len(),
            config.tenants.iter().map(|t| t.domain()).collect::<Vec<_>>().join(", ")
        ))),
    }
}
