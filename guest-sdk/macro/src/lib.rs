//! The `#[handler]` attribute macro. Use it through `sluice_sdk::handler`.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType, parse_macro_input};

/// Exports a function as the component's Sluice handler.
///
/// The function takes one argument, the `sluice_sdk::Event`, and returns
/// `Result<R, E>` where `R: Into<sluice_sdk::Response>` and `E: Into<sluice_sdk::Error>`.
/// One handler per component.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[handler] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    if let Err(e) = check_signature(&function) {
        return e.to_compile_error().into();
    }
    let name = &function.sig.ident;
    quote! {
        #function

        #[doc(hidden)]
        struct __SluiceHandler;

        impl ::sluice_sdk::__private::Guest for __SluiceHandler {
            fn handle(
                event: ::sluice_sdk::__private::RawEvent,
            ) -> ::core::result::Result<
                ::sluice_sdk::__private::RawResponse,
                ::sluice_sdk::__private::RawError,
            > {
                ::sluice_sdk::__private::run(event, #name)
            }

            fn handle_batch(
                events: ::std::vec::Vec<::sluice_sdk::__private::RawEvent>,
            ) -> ::std::vec::Vec<::core::result::Result<
                ::sluice_sdk::__private::RawResponse,
                ::sluice_sdk::__private::RawError,
            >> {
                ::sluice_sdk::__private::run_each(events, #name)
            }
        }

        ::sluice_sdk::__private::export!(__SluiceHandler);
    }
    .into()
}

/// Exports a function as the component's Sluice batch handler: it receives up to the
/// manifest's `batch.max_size` events at once and returns one result per event, in order.
///
/// The function takes `Vec<sluice_sdk::Event>` and returns `Vec<Result<R, E>>` where
/// `R: Into<sluice_sdk::Response>` and `E: Into<sluice_sdk::Error>`. Each event's job keeps
/// its own status, retries and dead letter. One handler per component.
#[proc_macro_attribute]
pub fn batch_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[batch_handler] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    if let Err(e) = check_signature(&function) {
        return e.to_compile_error().into();
    }
    let name = &function.sig.ident;
    quote! {
        #function

        #[doc(hidden)]
        struct __SluiceHandler;

        impl ::sluice_sdk::__private::Guest for __SluiceHandler {
            fn handle(
                event: ::sluice_sdk::__private::RawEvent,
            ) -> ::core::result::Result<
                ::sluice_sdk::__private::RawResponse,
                ::sluice_sdk::__private::RawError,
            > {
                ::sluice_sdk::__private::run_batch(::std::vec![event], #name)
                    .pop()
                    .expect("one result for one event")
            }

            fn handle_batch(
                events: ::std::vec::Vec<::sluice_sdk::__private::RawEvent>,
            ) -> ::std::vec::Vec<::core::result::Result<
                ::sluice_sdk::__private::RawResponse,
                ::sluice_sdk::__private::RawError,
            >> {
                ::sluice_sdk::__private::run_batch(events, #name)
            }
        }

        ::sluice_sdk::__private::export!(__SluiceHandler);
    }
    .into()
}

/// Rejects signatures the host cannot call, pointing at the offending part.
fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if let Some(asyncness) = sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "a Sluice handler is a plain `fn`, not `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a Sluice handler cannot be generic",
        ));
    }
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            "a Sluice handler takes exactly one argument: `ev: sluice_sdk::Event`",
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.span(),
            "a Sluice handler returns `Result<Response, Error>`",
        ));
    }
    Ok(())
}
