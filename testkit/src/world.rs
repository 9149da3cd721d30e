//! Worlds (data + the collaborative models the tools read) for the tests: MovieLens-100k
//! or the synthetic dataset, with one quick epoch of BPR and SASRec.

use datasets::{prepare, read_raw, PrepareConfig, Prepared};
use std::path::Path;
use tools::models::TrainOptions;
use tools::World;

/// `d` with its models trained quickly (seed 1, one epoch of BPR and of SASRec).
pub fn quick_world(d: Prepared) -> World {
    trained(d, 1)
}

/// `d` with its models trained with seed 1, `bpr_epochs` epochs of BPR and one of SASRec.
pub fn trained(d: Prepared, bpr_epochs: usize) -> World {
    let opts = TrainOptions {
        seed: 1,
        bpr_epochs,
        sasrec_epochs: 1,
        progress: false,
    };
    World::train(d, &opts).expect("training the collaborative models")
}

/// MovieLens-100k (recbole's copy, split seed 42) as `quick_world`.
pub fn ml100k_world() -> World {
    let raw =
        read_raw("ml-100k", None).expect("MovieLens-100k from recbole (run scripts/setup.sh)");
    quick_world(prepare(&raw, &PrepareConfig::new("ml-100k", 42)).expect("prepare ml-100k"))
}

/// The synthetic dataset (40 users, 80 items, 8 users per subset, split seed 2) from
/// generator seed `seed`, as `quick_world`.
pub fn synthetic_world(seed: u64) -> World {
    let raw = crate::synthetic::raw_dataset(40, 80, seed);
    let cfg = PrepareConfig {
        subset_users: 8,
        ..PrepareConfig::new("synthetic", 2)
    };
    quick_world(prepare(&raw, &cfg).expect("prepare the synthetic dataset"))
}

/// `synthetic_world(seed)` written to `path` as `data prepare` writes a store.
pub fn synthetic_store(path: &Path, seed: u64) -> World {
    let w = synthetic_world(seed);
    tools::world::save(&w, path).expect("writing the store");
    w
}
