//! The RudderStack stand-in the tests drive: the library's (`auth0_rudderstack::standin::rudderstack`), so
//! the tests exercise the same code `auth0-rudderstack demo` runs.

pub use auth0_rudderstack::standin::rudderstack::*;
