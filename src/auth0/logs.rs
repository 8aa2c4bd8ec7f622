//! STUB: `/api/v2/logs` paging.
use serde_json::value::RawValue;

use super::Error;
use crate::config;

/// One page of `/api/v2/logs`.
#[derive(Debug)]
pub struct Page {
    /// The entries, raw, in the order Auth0 returned them (`log_id` order).
    pub entries: Vec<Box<RawValue>>,
}

/// The result of the bootstrap query for a state with no cursor.
#[derive(Debug)]
pub struct Bootstrap {
    /// An entry that must itself be forwarded (the first found by `oldest` or a time), which also becomes the cursor.
    pub first: Option<Box<RawValue>>,
    /// A cursor to start after without forwarding anything (`now`, or a `log_id`).
    pub cursor: Option<String>,
}

/// The Management API client: token cache, pacing, paging. Cheap to clone.
#[derive(Clone)]
pub struct Client {}

impl Client {
    /// Build a client from the `[auth0]` section.
    pub fn new(cfg: &config::Auth0) -> Result<Client, Error> {
        let _ = cfg;
        todo!()
    }
    /// Make sure a valid token is cached, minting one if needed (for `check`).
    pub async fn ensure_token(&self) -> Result<(), Error> {
        todo!()
    }
    /// Read the page after `from`.
    pub async fn page_after(&self, from: &str, take: u32) -> Result<Page, Error> {
        let _ = (from, take);
        todo!()
    }
    /// Find where a fresh state begins.
    pub async fn bootstrap(&self, start: &config::Start) -> Result<Bootstrap, Error> {
        let _ = start;
        todo!()
    }
    /// Read one page, to prove the token carries `read:logs`.
    pub async fn probe(&self) -> Result<usize, Error> {
        todo!()
    }
    /// How many tokens this client has minted (each one writes a `seccft` entry into the tenant log).
    pub fn tokens_minted(&self) -> u64 {
        todo!()
    }
}
