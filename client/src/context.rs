//! Where a verb runs: on the embedded store (its own catalog), or against a cluster (the
//! cluster's catalog, content moved through a local cache store). The verbs see one
//! interface; [`Ctx::content`] makes an image's closure present in [`Ctx::store`] first.

use anyhow::{bail, Result};
use mirage_format::Digest;
use mirage_node::api::catalog::CommandAnswer;
use mirage_node::catalog::{Command, ImageRecord, Named, Query, QueryAnswer, User};
use mirage_node::Store;

use crate::remote::Remote;

/// The catalog and content a verb works on.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Content: the embedded store, or the local cache of a cluster.
    pub store: &'a Store,
    /// The cluster, in remote mode.
    pub remote: Option<&'a Remote>,
    /// The caller: `--as` (embedded) or the token's user (remote).
    pub caller: String,
}

macro_rules! expect {
    ($answer:expr, $variant:ident) => {
        match $answer {
            QueryAnswer::$variant(v) => Ok(v),
            other => bail!("unexpected catalog answer {other:?}"),
        }
    };
}

impl<'a> Ctx<'a> {
    /// The embedded store, as `caller`.
    pub fn local(store: &'a Store, caller: &str) -> Self {
        Ctx {
            store,
            remote: None,
            caller: caller.to_string(),
        }
    }

    /// A cluster, with `cache` as the local content store; the caller is the token's user.
    pub fn remote(cache: &'a Store, remote: &'a Remote) -> Result<Self> {
        Ok(Ctx {
            store: cache,
            remote: Some(remote),
            caller: remote.whoami()?,
        })
    }

    /// Applies a catalog command.
    pub fn submit(&self, cmd: Command) -> Result<CommandAnswer> {
        match self.remote {
            Some(r) => r.command(&cmd),
            None => {
                crate::library::ensure_caller(self.store, &self.caller)?;
                Ok(CommandAnswer {
                    response: self.store.catalog().submit(&self.caller, cmd)?,
                    token: None,
                })
            }
        }
    }

    /// Runs a catalog query.
    pub fn query(&self, q: &Query) -> Result<QueryAnswer> {
        match self.remote {
            Some(r) => r.query(q),
            None => {
                crate::library::ensure_caller(self.store, &self.caller)?;
                Ok(self.store.catalog().query(&self.caller, q)?)
            }
        }
    }

    /// A named image the caller may read.
    pub fn named(&self, name: &str) -> Result<Named> {
        expect!(self.query(&Query::Named { name: name.into() })?, Named)
    }

    /// Every named image the caller may read.
    pub fn list(&self) -> Result<Vec<Named>> {
        expect!(self.query(&Query::List)?, List)
    }

    /// Users.
    pub fn users(&self) -> Result<Vec<User>> {
        expect!(self.query(&Query::Users)?, Users)
    }

    /// Image records the caller may see; with `image`, that one (none if the catalog does
    /// not know it; an error if the caller may not see it).
    pub fn images(&self, image: Option<Digest>) -> Result<Vec<ImageRecord>> {
        expect!(self.query(&Query::Images { image })?, Images)
    }

    /// The image a REF (`NAME`, `NAME@VERSION` or digest, without `:PART`) names.
    pub fn image_of(&self, reference: &str) -> Result<Digest> {
        if let Ok(d) = reference.parse::<Digest>() {
            // Refused like an unknown name if the catalog knows it and the caller may not
            // see it; an image the catalog does not know is the checker-in's to share.
            self.images(Some(d))?;
            return Ok(d);
        }
        if reference.starts_with("sha256:") || reference.starts_with("sha1:") {
            bail!("{reference:?} is not a valid digest");
        }
        match self.query(&Query::Resolve {
            reference: reference.into(),
        })? {
            QueryAnswer::Resolved(r) => Ok(r.image),
            other => bail!("unexpected catalog answer {other:?}"),
        }
    }

    /// Makes `image`'s closure present in [`Ctx::store`] (remote mode: pulls what the cache
    /// lacks; embedded: nothing to do).
    pub fn content(&self, image: &Digest) -> Result<()> {
        if let Some(r) = self.remote {
            let s = crate::remote::sync::pull(self.store, r, image)?;
            if s.items > 0 {
                tracing::info!(
                    "pulled {} items ({} bytes) of {} from {}",
                    s.items,
                    s.bytes,
                    image.to_text(),
                    r.url()
                );
            }
        }
        Ok(())
    }

    /// [`Ctx::image_of`], then [`Ctx::content`].
    pub fn image_with_content(&self, reference: &str) -> Result<Digest> {
        let d = self.image_of(reference)?;
        self.content(&d)?;
        Ok(d)
    }
}
