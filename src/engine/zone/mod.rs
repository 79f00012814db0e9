//! `async_mirror_zone`'s table, apart from nginx: its layout in shared memory, the
//! lock-free claim of endpoint and field slots, the view workers and the master read and
//! write, and each worker's fold of its counters into it. The nginx layer only maps the
//! memory (`ngx/shm.rs`).

mod claim;
mod layout;
mod link;
mod rows;
mod table;

pub use layout::{EndpointSlot, Header, LAYOUT, MIN_SIZE, TargetSlot, plan, row_len, table_bytes};
pub use link::ZoneLink;
pub use rows::WorkerRows;
pub use table::ZoneTable;
