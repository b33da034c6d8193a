//! Handler attributes for postage processors.
