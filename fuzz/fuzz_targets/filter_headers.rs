//! The filter's decoding of the header maps Envoy hands it (`HeaderPairs`). Any buffer: no
//! panic, and what it accepts serialises back to pairs it reads the same. Pairs serialised
//! here: read back exactly; every shorter cut of the buffer is refused (but the empty map);
//! and a request read through the filter decides as the same request read as a plain list.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollout_fuzz::{filter_decide, filter_header_pairs, serialize_pairs, vectors};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(raw) = <&[u8]>::arbitrary(&mut u) else {
        return;
    };
    if let Some(pairs) = filter_header_pairs(raw.to_vec()) {
        let wire = serialize_pairs(&pairs);
        assert_eq!(filter_header_pairs(wire.clone()), Some(pairs.clone()));
        assert!(
            raw.is_empty() || wire.len() <= raw.len(),
            "read more than the buffer held"
        );
    }

    let Ok(pairs) = Vec::<(Vec<u8>, Vec<u8>)>::arbitrary(&mut u) else {
        return;
    };
    let wire = serialize_pairs(&pairs);
    assert_eq!(
        filter_header_pairs(wire.clone()).as_ref(),
        Some(&pairs),
        "round trip"
    );
    if let Ok(cut) = u.choose_index(wire.len())
        && cut > 0
    {
        assert_eq!(
            filter_header_pairs(wire[..cut].to_vec()),
            None,
            "a cut at {cut} accepted"
        );
    }

    // The same request, through the filter and as a plain list.
    let Ok(config) = u.choose(&vectors().configs) else {
        return;
    };
    let now_ms = Option::<u64>::arbitrary(&mut u).unwrap_or(None);
    let named: Option<Vec<(String, Vec<u8>)>> = pairs
        .iter()
        .map(|(n, v)| String::from_utf8(n.clone()).ok().map(|n| (n, v.clone())))
        .collect();
    if let Some(list) = named {
        let inputs = rollout_core::HostInputs {
            now_ms,
            ..Default::default()
        };
        let plain = format!("{:?}", config.decide(&list[..], inputs));
        assert_eq!(filter_decide(config, wire, now_ms), Some(plain));
    }
});
