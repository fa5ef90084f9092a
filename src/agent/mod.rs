//! `ocisync agent`: writes RuleBundles' `nodeFiles` onto this node.

pub mod desired;
pub mod disk;
