/** The header that carries a request's id from client to server and back (http/request-id.ts). */
export const REQUEST_ID_HEADER = 'x-request-id';
