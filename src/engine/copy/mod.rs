//! A copy's whole life: the nginx thread's decisions for a request (selection,
//! admission, capture, held copies), each target's lane on the runtime, and the flight
//! of one copy to its single outcome, its log line and its comparison.

mod admission;
mod departure;
mod fates;
mod inbox;
mod lane;
mod life;
mod recorded;
mod request;
mod select;

pub use lane::{FLUSH_AT, Lanes};
pub use life::Logs;
pub use request::{Facts, Location, RequestCopies, RequestView, Route};
pub use select::Selection;
