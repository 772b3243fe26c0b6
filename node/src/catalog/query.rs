//! Catalog queries as data: what a remote client asks a node (`POST /v1/catalog/query`), each
//! answered under the caller's ACL exactly as the embedded [`super::Catalog`] answers it.

use mirage_format::Digest;
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, ImageRecord, Named, Resolved, User};

/// A read of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Query {
    /// Resolves `NAME`, `NAME@VERSION` or a digest.
    Resolve {
        /// The reference.
        reference: String,
    },
    /// A named image the caller may read.
    Named {
        /// Name.
        name: String,
    },
    /// Every named image the caller may read.
    List,
    /// Image records the caller may see: all of them, or one (none if the catalog does not
    /// know it, `not_found` if the caller may not see it).
    Images {
        /// Only this image.
        #[serde(default)]
        image: Option<Digest>,
    },
    /// Every user (names and roles; token hashes are never returned).
    Users,
    /// The caller itself.
    Whoami,
    /// The cluster layout: the current version, or the one asked for (none if there is no
    /// such version).
    Layout {
        /// Only this version.
        #[serde(default)]
        version: Option<u64>,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryAnswer {
    /// A resolved reference.
    Resolved(Resolved),
    /// One named image.
    Named(Named),
    /// Named images.
    List(Vec<Named>),
    /// Image records.
    Images(Vec<ImageRecord>),
    /// Users.
    Users(Vec<User>),
    /// The caller.
    User(User),
    /// A layout version.
    Layout(Option<mirage_cluster_config::Layout>),
}

fn public(mut u: User) -> User {
    u.token_sha256 = None;
    u
}

impl Catalog<'_> {
    /// Answers `q` for `caller`, from one moment of the catalog (every key the answer needs
    /// as one command left it; [`Catalog::consistent`]).
    pub fn query(&self, caller: &str, q: &Query) -> Result<QueryAnswer, CatalogError> {
        self.consistent(|c| c.answer(caller, q))
    }

    fn answer(&self, caller: &str, q: &Query) -> Result<QueryAnswer, CatalogError> {
        Ok(match q {
            Query::Resolve { reference } => QueryAnswer::Resolved(self.resolve(caller, reference)?),
            Query::Named { name } => QueryAnswer::Named(self.named(caller, name)?),
            Query::List => QueryAnswer::List(self.list(caller)?),
            Query::Images { image: Some(d) } => match self.image(d)? {
                None => QueryAnswer::Images(Vec::new()),
                Some(r) if self.may_see(caller, &r)? => QueryAnswer::Images(vec![r]),
                // Known but not visible: the same refusal as an unknown name.
                Some(_) => return Err(CatalogError::NotFound(d.to_text())),
            },
            Query::Images { image: None } => {
                let mut out = Vec::new();
                for r in self.images()? {
                    if self.may_see(caller, &r)? {
                        out.push(r);
                    }
                }
                QueryAnswer::Images(out)
            }
            Query::Users => QueryAnswer::Users(self.users()?.into_iter().map(public).collect()),
            Query::Layout { version } => {
                self.caller(caller)?;
                QueryAnswer::Layout(self.layout(*version)?)
            }
            Query::Whoami => QueryAnswer::User(public(
                self.user(caller)?
                    .ok_or_else(|| CatalogError::NoSuchUser(caller.to_string()))?,
            )),
        })
    }
}
