//! (being written) the pickle reader.
