//! How query results become this crate's types: structs read by column name, enums stored as text.
//!
//! What sqlx's `#[derive(sqlx::FromRow)]` and `#[derive(sqlx::Type)]` write, as declarative macros.
//! The derives are sqlx's proc macro, and with it a cold build compiled sqlx, tokio and about a
//! hundred crates under them a second time, for the compiler (BENCHMARKS.md, twenty-fifth pass).
//! The impls below are what the derives generate for these cases, through sqlx's public traits.

/// `FromRow` for a struct whose fields are named as the query's columns: each field is read with
/// `Row::try_get(name)`, so a missing column or a type mismatch is sqlx's own error, naming the
/// column. The field list is checked by the compiler: a field left out (or one the struct lacks)
/// does not build.
macro_rules! from_row {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl<'r> ::sqlx::FromRow<'r, ::sqlx::postgres::PgRow> for $ty {
            fn from_row(row: &'r ::sqlx::postgres::PgRow) -> ::std::result::Result<Self, ::sqlx::Error> {
                use ::sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    };
}
pub(crate) use from_row;

/// Binds and reads an enum as PostgreSQL `text`, through its `as_str` and `parse` (the names its
/// serde form uses too). A value the enum does not know is a decode error naming it, not a panic.
macro_rules! text_enum {
    ($ty:ident) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $ty {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let s = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                $ty::parse(s).ok_or_else(|| format!("{s:?} is not a {}", stringify!($ty)).into())
            }
        }
    };
}
pub(crate) use text_enum;
