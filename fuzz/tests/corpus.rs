//! The checked-in `ops` seeds are exactly the encodings of `bounce_fuzz::seeds`, and
//! decode back to them. `BOUNCE_FUZZ_WRITE_CORPUS=1` rewrites the files.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use bounce_fuzz::ops::OpsInput;
use bounce_fuzz::seeds::ops_seeds;

#[test]
fn ops_seeds_round_trip_and_match_the_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ops");
    let write = std::env::var_os("BOUNCE_FUZZ_WRITE_CORPUS").is_some_and(|v| v == "1");
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, input) in ops_seeds() {
        let bytes = input.encode();
        let back = OpsInput::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
        assert_eq!(back, input, "{name}: the encoding does not decode back");
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(on_disk == bytes, "{name}: corpus file differs from the seed; regenerate it");
        }
    }
}
