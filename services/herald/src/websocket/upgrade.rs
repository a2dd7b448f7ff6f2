//! The HTTP/1 connection's upgrade service: actix-http hands it every WebSocket upgrade
//! request with the connection itself. It routes the request through the same app as any
//! other (handlers, extractors and refusals unchanged), writes the response, and on a
//! `101` hands the socket to the session the handler started; the HTTP/1 connection, with
//! its buffers and its task, then ends.

use std::convert::Infallible;
use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::{h1, ConnectionType, Request, StatusCode};
use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_web::body::BoxBody;
use actix_web::dev::ServiceResponse;
use actix_web::HttpResponse;
use futures_util::SinkExt;

use super::socket::Handover;

/// The longest refusal body written on an upgrade request (they are a line of JSON).
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Why an upgrade request's connection ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The response could not be written.
    #[error("writing the upgrade response failed: {0}")]
    Write(#[from] std::io::Error),
    /// The refusal's body could not be read.
    #[error("the upgrade refusal's body could not be read: {0}")]
    Body(String),
}

/// Serves one upgrade request on its connection with `app`. A connection that fails here
/// is a client gone mid-handshake: logged at debug, not an error of the node.
pub async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), Infallible>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    if let Err(error) = respond(app, req, framed).await {
        tracing::debug!(%error, "upgrade request ended without a session");
    }
    Ok(())
}

/// Routes the request through `app`, writes the response and hands a `101`'s socket over.
async fn respond<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), UpgradeError>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let response: HttpResponse = match app.call(req).await {
        Ok(response) => response.map_into_boxed_body().into_parts().1,
        Err(error) => error.error_response(),
    };
    let (mut head, body) = actix_http::Response::<BoxBody>::from(response).into_parts();
    let handover = head.extensions_mut().remove::<Handover>();
    match handover {
        Some(handover) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            framed
                .send(h1::Message::Item((head, BodySize::None)))
                .await?;
            let parts = framed.into_parts();
            handover.complete(parts.io, parts.read_buf);
        }
        _ => {
            // A refusal: written whole, then the connection closes (the client would not
            // reuse a connection whose upgrade failed).
            let body = actix_web::body::to_bytes_limited(body, MAX_REFUSAL_BODY)
                .await
                .map_err(|_| UpgradeError::Body(format!("over {MAX_REFUSAL_BODY} bytes")))?
                .map_err(|error| UpgradeError::Body(error.to_string()))?;
            head.head_mut().set_connection_type(ConnectionType::Close);
            let size = BodySize::Sized(body.len() as u64);
            framed.feed(h1::Message::Item((head, size))).await?;
            if !body.is_empty() {
                framed.feed(h1::Message::Chunk(Some(body))).await?;
            }
            framed.send(h1::Message::Chunk(None)).await?;
        }
    }
    Ok(())
}
