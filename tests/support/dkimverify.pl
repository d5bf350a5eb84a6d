#!/usr/bin/perl
# Verify every DKIM signature of one message with Mail::DKIM (an independent
# verifier, Debian's libmail-dkim-perl), resolving keys through a given DNS
# server only (the test's server on 127.0.0.x), never the system resolver.
#
# Usage: dkimverify.pl HOST PORT < message
# Output: one line per signature, "RESULT d=DOMAIN s=SELECTOR a=ALGORITHM DETAIL",
#         then "overall RESULT". Exit 0 when the overall result is "pass", 1 otherwise,
#         2 on a usage error.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

@ARGV == 2 or do { print STDERR "usage: $0 HOST PORT < message\n"; exit 2 };
my ($host, $port) = @ARGV;
my $resolver = Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 1,
    tcp_timeout => 5, udp_timeout => 5, retry => 1,
);
$resolver->searchlist();   # no search domains from /etc/resolv.conf
$resolver->domain("");
Mail::DKIM::DNS::resolver($resolver);

binmode STDIN;
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    # Mail::DKIM wants SMTP line ends; a message handed over with bare LF is
    # what a file on disk looks like, and the wire would carry CRLF.
    $line =~ s/\r?\n\z/\r\n/;
    $dkim->PRINT($line);
}
$dkim->CLOSE();

foreach my $sig ($dkim->signatures) {
    my $detail = $sig->result_detail;
    printf "%s d=%s s=%s a=%s %s\n", $sig->result, ($sig->domain // ""),
        ($sig->selector // ""), ($sig->algorithm // ""), $detail;
}
printf "overall %s\n", $dkim->result;
exit($dkim->result eq "pass" ? 0 : 1);
