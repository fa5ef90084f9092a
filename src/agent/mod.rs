//! `ocisync agent`: writes RuleBundles' `nodeFiles` onto this node.

pub mod disk;
