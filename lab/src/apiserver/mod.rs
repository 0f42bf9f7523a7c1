//! The lab's API server: one object store and one watch hub for every
//! resource type, with per-kind code only where the real API has special
//! behaviour (status subresource, generation, discovery, TokenReview).
