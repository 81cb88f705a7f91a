//! The pickle reader on arbitrary bytes, then the accessors CIFAR uses.
#![no_main]
use fastnn::data::pickle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = pickle::parse(data) {
        for key in ["data", "labels", "fine_labels", "label_names"] {
            if let Some(v) = doc.get(doc.root, key) {
                let _ = doc.items(v);
                let _ = doc.text(v);
                if let Some(a) = doc.array(v) {
                    let _ = a.data.and_then(|d| doc.bytes(d));
                }
            }
        }
    }
});
