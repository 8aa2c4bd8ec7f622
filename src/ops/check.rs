//! `check`: everything `run` needs, tried once and reported line by line, so that an operator finds every
//! problem in one go: the config (already loaded), for each tenant a token, one log page and the RudderStack
//! write key (without sending an event), and whether the state file and its directory can be used.

use std::io::Write;

use crate::config::Config;
use crate::logging::Chain;
use crate::{auth0, rudderstack, store};

use super::Error;

/// How one check ended.
enum Outcome {
    Ok,
    Failed,
    Skipped,
}

/// Run the checks of the selected tenants, writing one line per check to `out`.
pub async fn run(config: &Config, tenant: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
    let selected = config.select(tenant)?;
    let mut lines: Vec<(Outcome, String, String)> =
        vec![(Outcome::Ok, "config".into(), config.path.display().to_string())];
    let several = config.tenants.len() > 1;
    for t in selected {
        let d = t.domain();
        let what = |w: &str| if several { format!("{w} ({d})") } else { w.to_string() };
        match auth0::Client::new(&t.auth0) {
            Ok(client) => match client.ensure_token().await {
                Ok(()) => {
                    lines.push((
                        Outcome::Ok,
                        what("auth0 token"),
                        format!("issued for client_id {}", t.auth0.client_id),
                    ));
                    lines.push(match client.probe().await {
                        Ok(n) => (
                            Outcome::Ok,
                            what("auth0 logs"),
                            format!(
                                "/api/v2/logs answered with {n} entr{} (read:logs is granted)",
                                if n == 1 { "y" } else { "ies" }
                            ),
                        ),
                        Err(e) => (Outcome::Failed, what("auth0 logs"), Chain(&e).to_string()),
                    });
                }
                Err(e) => {
                    lines.push((Outcome::Failed, what("auth0 token"), Chain(&e).to_string()));
                    lines.push((Outcome::Skipped, what("auth0 logs"), "needs a token".into()));
                }
            },
            Err(e) => lines.push((Outcome::Failed, what("auth0 token"), Chain(&e).to_string())),
        }
        lines.push(match rudderstack::Sink::new(&t.rudderstack) {
            Ok(sink) => match sink.check().await {
                Ok(()) => (
                    Outcome::Ok,
                    what("rudderstack"),
                    format!("write key accepted by {}", t.rudderstack.data_plane_url),
                ),
                Err(e) => (Outcome::Failed, what("rudderstack"), Chain(&e).to_string()),
            },
            Err(e) => (Outcome::Failed, what("rudderstack"), Chain(&e).to_string()),
        });
    }
    lines.push(match store::check_usable(&config.state.path) {
        Ok(found) => (Outcome::Ok, "state".into(), found),
        Err(e) => (Outcome::Failed, "state".into(), Chain(&e).to_string()),
    });
    let mut failed = Vec::new();
    for (outcome, what, text) in &lines {
        let label = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => {
                failed.push(what.as_str());
                "FAILED"
            }
            Outcome::Skipped => "skipped",
        };
        let _ = writeln!(out, "{label:<8}{what}: {}", crate::logging::escape(text));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::ChecksFailed(format!(
            "{} check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        )))
    }
}
