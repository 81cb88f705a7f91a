//! (being written) CPU feature detection.
