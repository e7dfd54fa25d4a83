//! `#[cached]`: memoizes a function in a `dbx_concurio::caches::DiskCache`, with the
//! compute-once guarantee of `get_or_load` (one call per distinct arguments across threads
//! and processes). Use it through dbx-concurio's `macros` feature: `dbx_concurio::cached`.
//!
//! ```ignore
//! #[dbx_concurio::cached(name = "fib", ttl_secs = 3600)]
//! fn fib(n: u64) -> Result<u64, dbx_concurio::Error> {
//!     Ok(if n < 2 { n } else { fib(n - 1)? + fib(n - 2)? })
//! }
//! ```
//!
//! The function must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and
//! `E: From<dbx_concurio::Error>` (cache errors are returned as `E`; the function's own
//! errors are returned as they are and nothing is stored). Its arguments must be plain
//! `name: Type` bindings of `Serialize` types: the key is the function's name (or `key`)
//! and the MessagePack encoding of the arguments. Options: `name` (the cache, default
//! "cached", in the default location), `key` (the key prefix, default the function's name),
//! `ttl_secs` (how long a value stays fresh; default forever).
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, MetaNameValue, Pat, PathArguments,
    ReturnType, Token, Type,
};

/// Memoizes the function it is put on; see the crate docs.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = syn::parse_macro_input!(
        attr with Punctuated::<MetaNameValue, Token![,]>::parse_terminated
    );
    let function = syn::parse_macro_input!(item as ItemFn);
    expand(options, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

struct Options {
    name: String,
    key: Option<String>,
    ttl_secs: Option<u64>,
}

fn parse_options(options: Punctuated<MetaNameValue, Token![,]>) -> syn::Result<Options> {
    let mut out = Options {
        name: "cached".to_owned(),
        key: None,
        ttl_secs: None,
    };
    for option in options {
        let Expr::Lit(ExprLit { lit, .. }) = &option.value else {
            return Err(syn::Error::new_spanned(&option.value, "expected a literal"));
        };
        match (
            option.path.get_ident().map(|i| i.to_string()).as_deref(),
            lit,
        ) {
            (Some("name"), Lit::Str(s)) => out.name = s.value(),
            (Some("key"), Lit::Str(s)) => out.key = Some(s.value()),
            (Some("ttl_secs"), Lit::Int(n)) => out.ttl_secs = Some(n.base10_parse()?),
            _ => {
                return Err(syn::Error::new_spanned(
                    &option,
                    "expected name = \"..\", key = \"..\" or ttl_secs = N",
                ));
            }
        }
    }
    Ok(out)
}

/// `T` and `E` of a `Result<T, E>` return type.
fn result_types(output: &ReturnType) -> syn::Result<(Type, Type)> {
    let error = || syn::Error::new_spanned(output, "#[cached] needs a `Result<T, E>` return type");
    let ReturnType::Type(_, ty) = output else {
        return Err(error());
    };
    let Type::Path(path) = &**ty else {
        return Err(error());
    };
    let last = path.path.segments.last().ok_or_else(error)?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(error());
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match (last.ident == "Result", types.as_slice()) {
        (true, [t, e]) => Ok(((*t).clone(), (*e).clone())),
        _ => Err(error()),
    }
}

fn expand(
    options: Punctuated<MetaNameValue, Token![,]>,
    function: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse_options(options)?;
    let sig = &function.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "#[cached] supports plain (not async, not generic) functions",
        ));
    }
    let (value_type, error_type) = result_types(&sig.output)?;
    let mut args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new_spanned(
                input,
                "#[cached] cannot memoize methods",
            ));
        };
        let Pat::Ident(ident) = &*typed.pat else {
            return Err(syn::Error::new_spanned(
                &typed.pat,
                "#[cached] needs plain `name: Type` arguments",
            ));
        };
        args.push(ident.ident.clone());
    }
    let (attrs, vis, block) = (&function.attrs, &function.vis, &function.block);
    let inputs = &sig.inputs;
    let name = &sig.ident;
    let inner = syn::Ident::new("__dbx_concurio_uncached", Span::mixed_site());
    let cache_name = options.name;
    let prefix = options.key.unwrap_or_else(|| name.to_string());
    let ttl = match options.ttl_secs {
        Some(secs) => quote!(::std::option::Option::Some(::std::time::Duration::from_secs(#secs))),
        None => quote!(::std::option::Option::None),
    };
    Ok(quote! {
        #(#attrs)*
        #vis fn #name(#inputs) -> ::std::result::Result<#value_type, #error_type> {
            fn #inner(#inputs) -> ::std::result::Result<#value_type, #error_type> #block
            static CACHE: ::std::sync::OnceLock<::dbx_concurio::caches::DiskCache> =
                ::std::sync::OnceLock::new();
            let cache = match ::dbx_concurio::__macro::cache(&CACHE, #cache_name) {
                ::std::result::Result::Ok(cache) => cache,
                ::std::result::Result::Err(err) => return ::std::result::Result::Err(err.into()),
            };
            let key = match ::dbx_concurio::__macro::key(#prefix, &(#(&#args,)*)) {
                ::std::result::Result::Ok(key) => key,
                ::std::result::Result::Err(err) => return ::std::result::Result::Err(err.into()),
            };
            let mut failure: ::std::option::Option<#error_type> = ::std::option::Option::None;
            let loaded = cache.get_or_load(
                &key,
                || match #inner(#(#args),*) {
                    ::std::result::Result::Ok(value) => ::std::result::Result::Ok(value),
                    ::std::result::Result::Err(err) => {
                        failure = ::std::option::Option::Some(err);
                        ::std::result::Result::Err(::dbx_concurio::__macro::Failed)
                    }
                },
                #ttl,
            );
            match (loaded, failure) {
                (::std::result::Result::Ok(value), _) => ::std::result::Result::Ok(value.value),
                (::std::result::Result::Err(_), ::std::option::Option::Some(err)) => {
                    ::std::result::Result::Err(err)
                }
                (::std::result::Result::Err(err), ::std::option::Option::None) => {
                    ::std::result::Result::Err(err.into())
                }
            }
        }
    })
}
