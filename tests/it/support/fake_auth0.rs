//! The Auth0 stand-in the tests drive: the library's (`auth0_rudderstack::standin::auth0`), so the tests
//! exercise the same code `auth0-rudderstack demo` runs.

pub use auth0_rudderstack::standin::auth0::*;
