/**
 * fast-xml-parser's parser module on its own: the package's main module also loads its XML builder, which
 * nothing here uses and which the libvirt hook would load on every call libvirtd waits for.
 */
declare module 'fast-xml-parser/src/xmlparser/XMLParser.js' {
  const XMLParser: typeof import('fast-xml-parser').XMLParser;
  export default XMLParser;
}
