//! GenericApplication.
