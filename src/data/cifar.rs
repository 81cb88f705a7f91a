//! (being written) CIFAR tarballs.
