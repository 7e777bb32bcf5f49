//! The `pgferry` command line: parses arguments, sets up logging, and calls into the library.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    println!("pgferry");
}
